#!/usr/bin/env bash
# Downloads the peer libraries the GPU benchmarks compare against into .whl/ (ignored by git), for a GPU image
# without network: pass .whl in the device tool's `carry` and benchmarks/gpu_run.sh installs them from there.
# Pure-Python wheels only (gsplat JIT-compiles its CUDA sources there); faiss-gpu's wheel exceeds the carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
  gsplat==1.5.3 liger-kernel==0.8.5 inf-cl==1.2.1 vector-quantize-pytorch==1.32.0 einx loguru torch-einops-utils frozendict
ls -1 .whl
