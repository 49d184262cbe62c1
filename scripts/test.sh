#!/usr/bin/env bash
# Sets qatkit up from nothing and runs every test: Catch2 (kernels, C++ API, example) via ctest,
# then the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch.compile's on-disk cache, the checkout's own: Inductor's FX graph cache key leaves out the vector
# ISA torch picked (ATEN_CPU_CAPABILITY), so a cache shared in /tmp with a process run under another
# ISA served wrong kernels to plain nn.Linear models (docs/results.md, 2026-12-05). ~15 s when cold.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor_cache}"
# Each phase's wall time, so a run near the 20-minute CI budget shows where it went.
t0=$SECONDS
phase() { echo "== $1 done in $((SECONDS - t0)) s (total $SECONDS s) =="; t0=$SECONDS; }
bash scripts/setup.sh
phase "setup"
echo "== C++ tests (ctest) =="
ctest --test-dir build/py --output-on-failure
phase "ctest"
echo "== Python tests (pytest) =="
"$PY" -m pytest tests/python -q -p no:cacheprovider
phase "pytest"
echo "== Fuzz run (150,000 op calls against float64 and pure-integer references, every CPU ISA; fixed seed) =="
"$PY" scripts/fuzz_ops.py --calls 150000 --seed 3 2>/dev/null
phase "fuzz"
