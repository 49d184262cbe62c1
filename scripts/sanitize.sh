#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run: builds qatkit (kernels, library, _C, Catch2
# tests) with -fsanitize=address,undefined in build/asan, runs the Catch2 suite (leak detection on:
# it is our code only), then the Python op and QAT tests against that build with the ASan runtime
# preloaded into python (leak detection off there: CPython and torch keep their allocations until
# exit by design, and their reports would drown ours), then the op fuzzer (the integer kernels'
# checks on their own, then every op's) against it. Any sanitizer report fails the run.
#   bash scripts/sanitize.sh [LOG_DIR] [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG="${1:-$ROOT/build/asan/logs}"
shift || true
mkdir -p "$LOG"
cd "$ROOT"
PY=python3
BUILD="$ROOT/build/asan"
TORCH_PREFIX="$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')"
JOBS="$(nproc)"

echo "sanitize: configure + build (build/asan)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DQATKIT_SANITIZE="address;undefined" -DQATKIT_CUDA=OFF -DQATKIT_UNITY_BUILD=OFF -DQATKIT_BUILD_TESTS=ON -DQATKIT_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$(command -v $PY)" >"$LOG/configure.log"
cmake --build "$BUILD" --parallel "$JOBS" >"$LOG/build.log"

# a package tree: the Python sources plus the sanitized library and _C
PKG="$BUILD/pkg"
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r python/qatkit "$PKG/qatkit"
rm -rf "$PKG/qatkit/lib" "$PKG/qatkit/_C"*.so "$PKG/qatkit/include" "$PKG/qatkit/share"
cmake --install "$BUILD" --prefix "$PKG/qatkit" >"$LOG/install.log"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
echo "sanitize: Catch2 suite (ASan with leak detection, UBSan)"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" ctest --test-dir "$BUILD" --output-on-failure >"$LOG/ctest.log" 2>&1 \
  || { tail -50 "$LOG/ctest.log"; exit 1; }
tail -3 "$LOG/ctest.log"

echo "sanitize: C++ loader fuzz (qatkit::nn::load on mutated exported files, in-process batches)"
# the seed files come from the regular install (python3 imports it); the mutated files go through
# the sanitized qatkit_load_run. allocator_may_return_null=1: a failed allocation raises (c10's
# "can't allocate memory"), as it does outside ASan, instead of aborting: a mutated header may
# describe a module whose forward needs more memory than the machine has (a float Conv2d padded
# by 2^26 asked for 256 GiB), which both loaders accept and the forward refuses
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" $PY scripts/fuzz_load.py --cpp --many 500 \
  --inputs "${QATKIT_SANITIZE_FUZZ:-20000}" --seed 5 --exe "$BUILD/qatkit_load_run" --max-rss-mb 4096 >"$LOG/fuzz_cpp.log" 2>&1 \
  || { tail -60 "$LOG/fuzz_cpp.log"; exit 1; }
tail -1 "$LOG/fuzz_cpp.log"
# the other seed pools (fuzz_load.py --pool): the other structure leaf kinds; Embedding tables
for pool in layers embedding; do
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" $PY scripts/fuzz_load.py --cpp --many 500 \
    --inputs "$(( ${QATKIT_SANITIZE_FUZZ:-20000} / 4 ))" --seed 5 --pool "$pool" --exe "$BUILD/qatkit_load_run" \
    --max-rss-mb 4096 >"$LOG/fuzz_cpp_$pool.log" 2>&1 || { tail -60 "$LOG/fuzz_cpp_$pool.log"; exit 1; }
  tail -1 "$LOG/fuzz_cpp_$pool.log"
done

echo "sanitize: Python op + QAT tests under the sanitized build"
ASAN_RT="$(gcc -print-file-name=libasan.so)"
UBSAN_RT="$(gcc -print-file-name=libubsan.so)"
LOADED="$(LD_PRELOAD="$ASAN_RT:$UBSAN_RT" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$PKG" \
  $PY -c 'import qatkit; print(qatkit.__file__)' 2>"$LOG/import.log" || true)"
case "$LOADED" in "$PKG"/*) ;; *) echo "sanitize: python imports qatkit from '$LOADED', not $PKG"; cat "$LOG/import.log"; exit 1 ;; esac
# torch.compile's Inductor would compile and load fresh C++ without the runtime: the compile tests
# that use it are deselected (the aot_eager ones still run)
LD_PRELOAD="$ASAN_RT:$UBSAN_RT" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" PYTHONPATH="$PKG" \
  QATKIT_SANITIZED=1 $PY -m pytest tests/python/ops tests/python/qat -q -p no:cacheprovider -x \
  -k "not inductor and not large_tensor and not ddp and not finetune_script and not cpp_nn" "$@" \
  >"$LOG/pytest.log" 2>&1 || { tail -60 "$LOG/pytest.log"; exit 1; }
tail -2 "$LOG/pytest.log"

echo "sanitize: op fuzz under the sanitized build (the integer kernels on every ISA table, then all ops)"
# fuzz_integer draws shapes at the kernels' tile / panel / block edges, every weight layout, conv
# geometries and channels_last inputs, on a random ISA table with 1 or 2 threads: the out-of-bounds
# reads and writes a bit-for-bit check cannot see (a read past a buffer that happens to hold zeros)
INTEGER_ONLY="$($PY -c 'from qatkit.testing.fuzz_integer import INTEGER_CHECKS; print(",".join(INTEGER_CHECKS))')"
LD_PRELOAD="$ASAN_RT:$UBSAN_RT" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" PYTHONPATH="$PKG" \
  $PY scripts/fuzz_ops.py --only "$INTEGER_ONLY" --calls "${QATKIT_SANITIZE_OP_FUZZ:-20000}" --seed 11 \
  >"$LOG/fuzz_ops_integer.log" 2>&1 || { tail -60 "$LOG/fuzz_ops_integer.log"; exit 1; }
tail -1 "$LOG/fuzz_ops_integer.log"
LD_PRELOAD="$ASAN_RT:$UBSAN_RT" ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" PYTHONPATH="$PKG" \
  $PY scripts/fuzz_ops.py --calls "${QATKIT_SANITIZE_OP_FUZZ:-20000}" --seed 12 \
  >"$LOG/fuzz_ops_all.log" 2>&1 || { tail -60 "$LOG/fuzz_ops_all.log"; exit 1; }
tail -1 "$LOG/fuzz_ops_all.log"
if grep -E "ERROR: AddressSanitizer|runtime error:" "$LOG"/*.log; then
  echo "sanitize: reports found"; exit 1
fi
echo "sanitize: clean (logs in $LOG)"
