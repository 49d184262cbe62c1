#!/usr/bin/env bash
# One script from a bare checkout to GPU results: build qatkit with CUDA (sm_90), run the CUDA
# tests (CUDA == CPU bit for bit, CUDA QAT layers), the GPU benchmark and the CUDA tests under
# compute-sanitizer (memcheck, racecheck, initcheck), and write every log under LOG_DIR.
#   scripts/gpu_check.sh LOG_DIR
# Target: an H100 with torch 2.11 + CUDA 13, no network, no Catch2 (the C++ tests are skipped).
set -uo pipefail
LOG=${1:?usage: scripts/gpu_check.sh LOG_DIR}
mkdir -p "$LOG"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
status=0
step() {  # step NAME CMD...: run, log, remember failures, keep going
  local name=$1; shift
  echo "== $name: $*" | tee -a "$LOG/summary.txt"
  local t0=$SECONDS
  "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc ($((SECONDS - t0)) s)" | tee -a "$LOG/summary.txt"
  [ $rc -eq 0 ] || { status=1; tail -n 40 "$LOG/$name.log"; }
}

date -u +"%Y-%m-%dT%H:%M:%SZ" >"$LOG/date.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv >"$LOG/gpu.csv" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda)" >"$LOG/env.txt" 2>&1
cat "$LOG/gpu.csv" "$LOG/env.txt"

step build env QATKIT_BUILD_DIR=build/gpu QATKIT_BUILD_TESTS=0 QATKIT_UNITY_BUILD=0 CMAKE_CUDA_ARCHITECTURES=90 TORCH_CUDA_ARCH_LIST=9.0 \
  MAX_JOBS=$(nproc) "$PY" -m pip install --no-deps --no-build-isolation -e .
step build_info "$PY" -c "import qatkit, json; i = qatkit.build_info(); print(json.dumps(i)); assert i['cuda'], 'built without CUDA'"
step test_cuda "$PY" -m pytest tests/python/ops/test_cuda.py tests/python/qat/test_cuda_qat.py -q -p no:cacheprovider
step test_cpu_ops "$PY" -m pytest tests/python/ops -q -p no:cacheprovider -x --deselect tests/python/ops/test_fake_quantize.py::test_large_tensor_over_2_31_elements
step bench_gpu "$PY" scripts/bench_gpu.py
# compute-sanitizer over the CUDA op tests (memcheck: out-of-bounds and misaligned accesses;
# racecheck: shared-memory races; initcheck: reads of uninitialized device memory). Last, so a slow
# sanitizer run cannot cost the results above; each run fails the step on any report.
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck initcheck; do
  step "sanitizer_$tool" timeout 240 "$CS" --tool "$tool" --error-exitcode 1 --target-processes all \
    "$PY" -m pytest tests/python/ops/test_cuda.py -q -p no:cacheprovider -x -k "not large"
done
"$PY" scripts/bench_gpu.py --json >"$LOG/bench_gpu.json" 2>/dev/null || true
echo "gpu_check: overall status $status (logs in $LOG)" | tee -a "$LOG/summary.txt"
exit $status
