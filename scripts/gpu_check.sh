#!/usr/bin/env bash
# One script from a bare checkout to GPU results: build qatkit with CUDA (sm_90) by CMake, run the CUDA
# tests (CUDA == CPU bit for bit, CUDA QAT layers), the GPU benchmark and the CUDA tests under
# compute-sanitizer (memcheck, racecheck, initcheck), and write every log under LOG_DIR.
#   scripts/gpu_check.sh LOG_DIR
# Target: an H100/H200 with torch 2.11 + CUDA 13, no network, no Catch2 (the C++ tests are skipped).
# GPU time is lent in minutes: GPU_CHECK_BUDGET (seconds, default 420) bounds the whole script;
# every step gets what is left (a step that would get under its minimum is skipped and logged),
# most valuable first: build, CUDA tests, benchmark, sanitizers, then the CPU op tests.
set -uo pipefail
LOG=${1:?usage: scripts/gpu_check.sh LOG_DIR}
mkdir -p "$LOG"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's CMake config finds the toolkit from nvcc's location: name the toolkit's own nvcc (a
# wrapper elsewhere on PATH, as on the CPU machines, leaves CUDA_INCLUDE_DIRS unset and fails).
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc} CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
fi
status=0
BUDGET=${GPU_CHECK_BUDGET:-420}
step() {  # step NAME MIN_S MAX_S CMD...: run under min(MAX_S, time left), log, remember failures, keep going
  local name=$1 min_s=$2 max_s=$3; shift 3
  local left=$((BUDGET - SECONDS))
  local limit=$((left < max_s ? left : max_s))
  if [ "$limit" -lt "$min_s" ]; then
    echo "== $name: SKIPPED (${left} s of the budget left, needs ${min_s})" | tee -a "$LOG/summary.txt"
    status=1
    return
  fi
  echo "== $name (<= ${limit} s): $*" | tee -a "$LOG/summary.txt"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc ($((SECONDS - t0)) s)$([ $rc -eq 124 ] && echo ' TIMED OUT')" | tee -a "$LOG/summary.txt"
  [ $rc -eq 0 ] || { status=1; tail -n 25 "$LOG/$name.log"; }
}

date -u +"%Y-%m-%dT%H:%M:%SZ" >"$LOG/date.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv >"$LOG/gpu.csv" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)" >"$LOG/env.txt" 2>&1
cat "$LOG/gpu.csv" "$LOG/env.txt"

# CMake directly, not pip: that machine has no network, and its pip (no pyproject.toml here) runs
# `setup.py develop`, which newer setuptools turn into an isolated build that downloads setuptools.
# The library and _C install into python/qatkit, imported through PYTHONPATH.
TORCH_CMAKE=$("$PY" -c "import torch; print(torch.utils.cmake_prefix_path)")
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
step configure 20 90 cmake -S . -B build/gpu "${GEN[@]}" -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" \
  -DPython_EXECUTABLE="$(command -v "$PY")" -DCMAKE_BUILD_TYPE=Release -DQATKIT_BUILD_TESTS=OFF -DQATKIT_BUILD_LOAD_RUN=ON -DQATKIT_CUDA=ON \
  -DQATKIT_WERROR=OFF -DQATKIT_UNITY_BUILD="${GPU_CHECK_UNITY:-OFF}" -DCMAKE_CUDA_ARCHITECTURES=90
step build 60 240 cmake --build build/gpu --parallel "$(nproc)"
step install 5 60 cmake --install build/gpu --prefix python/qatkit
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
step build_info 5 60 "$PY" -c "import qatkit, json; i = qatkit.build_info(); print(json.dumps(i)); assert i['cuda'], 'built without CUDA'"
export QATKIT_LOAD_RUN="$PWD/build/gpu/qatkit_load_run"  # the C++ loader on CUDA (test_cuda_qat.py)
# 4 xdist workers share the GPU where pytest-xdist is installed (the tests are small; minutes are lent)
XDIST=(); "$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
step test_cuda 20 150 "$PY" -m pytest tests/python/ops/test_cuda.py tests/python/qat/test_cuda_qat.py tests/python/test_bound_op.py -q -p no:cacheprovider -rs "${XDIST[@]}"
step bench_gpu 20 200 "$PY" scripts/bench_gpu.py --json "$LOG/bench_gpu.json"
cat "$LOG/bench_gpu.log"
# the integer kernels on random shapes at their tile / block edges, every weight layout, NaN / Inf
# inputs, against the pure-integer references (the CPU's fuzz checks, qatkit.testing.fuzz_integer)
step fuzz_cuda 15 35 "$PY" scripts/fuzz_ops.py --device cuda --calls 1000000 --seconds 20 --json
# the integer ops' error paths under this machine's compiler (their messages crashed a GCC 13 build
# until they formatted with fmt: docs/gpu.md, 2026-12-04, sixteenth session)
INT_TESTS=(tests/python/ops/test_linear_int8.py tests/python/ops/test_linear_lowbit.py tests/python/ops/test_conv_int8.py
           tests/python/ops/test_w4a8.py tests/python/ops/test_weight_only.py tests/python/ops/test_linear_dynamic.py)
step test_cpu_errors 20 90 "$PY" -m pytest "${INT_TESTS[@]}" tests/python/ops/test_bad_input.py -q \
  -p no:cacheprovider -n 8
# compute-sanitizer over the CUDA op tests (memcheck: out-of-bounds and misaligned accesses;
# racecheck: shared-memory races; initcheck: reads of uninitialized device memory). Each fails its
# step on any report; a subset per tool (one kernel family each at least), the sanitizer being slow.
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
SAN_K="integer or w4 or w8 or dynamic or binarize or ternarize or histogram or special or learnable_backward or pact or observer"
SAN_K="$SAN_K or conv2d_int8 or xnor or depthwise"
# (no -x: a failing test must not end a sanitizer's coverage; the step's time limit bounds it)
step sanitizer_memcheck 20 90 "$CS" --tool memcheck --error-exitcode 1 --target-processes all \
  "$PY" -m pytest tests/python/ops/test_cuda.py -q -p no:cacheprovider -k "$SAN_K"
for tool in racecheck initcheck; do
  step "sanitizer_$tool" 20 45 "$CS" --tool "$tool" --error-exitcode 1 --target-processes all \
    "$PY" -m pytest tests/python/ops/test_cuda.py -q -p no:cacheprovider -k "integer or w4a8 or histogram or observer"
done
# initcheck reported reads of torch._int_mm's output at M = 20 (docs/gpu.md, sixteenth session): the
# same reads with torch alone, no qatkit op, say whether cuBLASLt's stores go untracked
step initcheck_int_mm 10 30 "$CS" --tool initcheck --error-exitcode 1 "$PY" -c "import torch
a = torch.randint(-128, 128, (20, 256), dtype=torch.int8, device='cuda')
b = torch.randint(-128, 128, (40, 256), dtype=torch.int8, device='cuda')
c = torch._int_mm(a, b.t()).add_(1)
torch.cuda.synchronize()
print('torch._int_mm M = 20:', tuple(c.shape))"
# The integer ops' bad-argument tests crashed (SIGSEGV) on the H200 machine's GCC 13 build
# (docs/gpu.md, 2026-12-04, call 4), each at the first bad call after an opcheck (or torch.compile)
# in the same worker: run that sequence alone under cuda-gdb (it debugs host code; gdb is not
# installed there) so a crash leaves a native backtrace in the log.
CGDB=$(command -v cuda-gdb || echo /usr/local/cuda/bin/cuda-gdb)
step crash_probe 15 60 "$CGDB" -batch -ex run -ex bt --args "$PY" -X faulthandler -m pytest "${INT_TESTS[@]}" \
  -q -p no:cacheprovider -p no:xdist -k "opcheck_and_compile or bad_arguments or opcheck_and_errors or packing_and_errors"
# every CPU op test under this machine's torch and compiler (test_cuda.py ran above)
step test_cpu_ops 30 150 "$PY" -m pytest tests/python/ops -q -p no:cacheprovider -n 8 --ignore tests/python/ops/test_cuda.py \
  --deselect tests/python/ops/test_fake_quantize.py::test_large_tensor_over_2_31_elements
echo "gpu_check: overall status $status after ${SECONDS} s (logs in $LOG)" | tee -a "$LOG/summary.txt"
exit $status
