#!/usr/bin/env bash
# The whole GPU validation in one call, for a lent GPU machine whose image has its own torch/triton and no
# network (see README "GPU runs"): build from source, run every test with the CUDA and Triton backends,
# compute-sanitizer (memcheck, racecheck) over the CUDA tests, then the benchmark suite.
# Logs and results are packed into ${OUT:-gpu-run}/gpu-run.tgz (a device tool returns few files), with the
# benchmark tables beside it; peer wheels (faiss, liger-kernel, vector-quantize-pytorch...)
# are installed from .whl/ when that folder was carried.
set -uo pipefail
OUT=${OUT:-gpu-run}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PYOPS_SYSTEM_PYTHON=1
status=0
step() {  # step NAME CMD...: runs CMD, logs to $LOGS/NAME.log, remembers a failure, never stops the run
  local name=$1; shift
  echo "== $name: $*"
  "$@" >"$LOGS/$name.log" 2>&1 || { echo "!! $name failed (rc=$?)"; status=1; }
  tail -n 25 "$LOGS/$name.log"
}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOGS/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOGS/device.txt"
step build make build PYOPS_SYSTEM_PYTHON=1
step tests python3 -m pytest tests -x -q -p no:cacheprovider --durations=15
SAN=$CUDA_HOME/bin/compute-sanitizer
for tool in memcheck racecheck; do
  step "sanitizer-$tool" "$SAN" --tool "$tool" --error-exitcode 1 --target-processes all \
    python3 -m pytest tests -q -p no:cacheprovider -k "cuda and not compile and not memory and not triton"
done
step bench python3 benchmarks/run.py --out "$LOGS/results"
cp "$LOGS"/results/*.md "$OUT"/ 2>/dev/null
tar -czf "$OUT/gpu-run.tgz" -C "$LOGS" .
exit $status
