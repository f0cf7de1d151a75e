#!/usr/bin/env bash
# The whole GPU validation in one call, for a lent GPU machine whose image has its own torch/triton and no
# network: build from source, every test with the CUDA and Triton backends, compute-sanitizer (memcheck,
# racecheck) over the CUDA tests, then the benchmark suite. Peer wheels (gsplat, liger-kernel,
# vector-quantize-pytorch and their needs) are installed from .whl/ when that folder was carried
# (benchmarks/peer_wheels.sh fills it); gsplat's CUDA extension is compiled in the background while the tests
# run (benchmarks/build_gsplat.py).
#
#   STEPS="build diagnose tests sanitizer tune vqindex bench"   which steps run (in this order; diagnose: the
#                                         native argument-error crash seen on GPU images; tune: Triton VQ tile
#                                         settings; vqindex: the prepared VQ index at small N)
#   TESTS_S=240 SANITIZER_S=120 VQINDEX_S=90  time box of each step, seconds; the benchmarks get what is left of
#   DEADLINE_S=570                        the whole run's time box
#   PYTEST_K=  BENCH_ARGS=                a pytest -k expression for the tests step; run.py arguments
#   PYOPS_GIT_COMMIT=$(git rev-parse HEAD)  the commit sent (the copy's own git metadata can lag behind it)
#
# Logs and results are packed into ${OUT:-gpu-run}/gpu-run.tgz (a device tool returns few files), with the
# benchmark tables and a prebuilt gsplat extension (gsplat-csrc.tgz) beside it.
set -uo pipefail
OUT=${OUT:-gpu-run}
STEPS=${STEPS:-build diagnose tests sanitizer vqindex bench}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PYOPS_SYSTEM_PYTHON=1
status=0
left() { echo $(( ${DEADLINE_S:-570} - SECONDS )); }
step() {  # step NAME SECONDS CMD...: runs CMD under a time box, logs to $LOGS/NAME.log, never stops the run
  local name=$1 limit=$2; shift 2
  echo "== $name (${limit}s at most, at ${SECONDS}s): $*"
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1 || { echo "!! $name failed (rc=$?)"; status=1; }
  tail -n 30 "$LOGS/$name.log"
}
has() { [[ " $STEPS " == *" $1 "* ]]; }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  if [ -f .whl/gsplat-csrc.tgz ]; then tar -xzf .whl/gsplat-csrc.tgz -C /tmp/site/gsplat; fi
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  echo "commit ${PYOPS_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"; date -u; } | tee "$LOGS/device.txt"
gsplat_pid=
if has bench && python3 -c "import gsplat" 2>/dev/null && ! python3 -c "import gsplat.csrc" 2>/dev/null; then
  MAX_JOBS=8 python3 benchmarks/build_gsplat.py /tmp/gsplat-build >"$LOGS/gsplat-build.log" 2>&1 &
  gsplat_pid=$!
fi
# In place, not `make build`: the image's setuptools turns `develop` into a pip call with build isolation,
# which needs the network.
has build && step build 400 env MAX_JOBS=12 python3 setup.py build_ext --inplace
ln -sfn ../triton_kernels pyops/triton_kernels  # what setup.py's package_dir does for an installed pyops
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# A C++ argument error that formats integers (here a D mismatch) crashed the process on the GCC 13 image instead
# of raising. Record the toolchain, the libstdc++ actually loaded, whether any shared (COMDAT) function outside
# the ISA copies holds AVX registers, and a native backtrace.
if has diagnose; then
  repro="import torch, pyops; torch.ops.pyops.vq_search(torch.randn(4, 8), torch.randn(10, 9), 1, 'l2', False)"
  so=$(ls pyops/_C*.so | head -1)
  {
    "${CXX:-c++}" --version | head -1
    python3 -c "import torch; print('cxx11 abi', torch._C._GLIBCXX_USE_CXX11_ABI); \
print(*[l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l or 'libgcc_s' in l], sep='\n')" | sort -u
    ldd "$so" | grep -E "stdc|gcc|gomp"
    objdump -d --no-show-raw-insn -C "$so" | awk '/^[0-9a-f]+ <.*>:$/ {fn = $0; next}
      /%[yz]mm/ && !(fn in seen) {seen[fn] = 1; if (fn !~ /AVX|avx|int8::/) print "AVX outside the ISA copies:", fn}' \
      | head -20
    python3 -X faulthandler -c "$repro"; echo "repro rc=$?"
    gdb=$(command -v gdb || echo "$CUDA_HOME/bin/cuda-gdb")
    [ -x "$gdb" ] && timeout 120 "$gdb" -batch -ex run -ex bt -ex "info registers rip" -ex "x/6i \$pc" \
      --args python3 -c "$repro" 2>&1 | grep -vE "^\[(New|Thread)|^Using host|libthread_db" | tail -60
  } >"$LOGS/diagnose.log" 2>&1
  cat "$LOGS/diagnose.log"
fi
# -v: every result is printed as it comes, so a run cut by its time box still names its failures.
has tests && step tests "${TESTS_S:-240}" python3 -m pytest tests -v -p no:cacheprovider -n 12 -rfE \
  --timeout 200 ${PYTEST_K:+-k "$PYTEST_K"}
has tests && grep -E "FAILED|ERROR|node down" "$LOGS/tests.log" | head -50
if has sanitizer; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" "${SANITIZER_S:-120}" "$CUDA_HOME/bin/compute-sanitizer" --tool "$tool" \
      --error-exitcode 1 --target-processes all python3 -m pytest tests -q -x -p no:cacheprovider \
      -k "cuda and not compile and not memory and not triton"
  done
fi
if [ -n "$gsplat_pid" ]; then
  wait "$gsplat_pid" && tar -czf "$OUT/gsplat-csrc.tgz" -C /tmp/site/gsplat $(cd /tmp/site/gsplat && ls csrc*.so) \
    || echo "!! gsplat build failed"
  tail -n 5 "$LOGS/gsplat-build.log"
fi
has tune && step tune "${TUNE_S:-150}" python3 benchmarks/tune_vq_triton.py
# Issue 19: does the prepared index (bf16 tiles, no per-call conversion or norms) speed the small-N search?
has vqindex && step vqindex "${VQINDEX_S:-90}" python3 benchmarks/vq_index_small_n.py
has bench && step bench "$(left)" python3 benchmarks/run.py --out "$LOGS/results" ${BENCH_ARGS:-}
cp "$LOGS"/results/*/*.md "$OUT"/ 2>/dev/null
tar -czf "$OUT/gpu-run.tgz" -C "$LOGS" .
exit $status
