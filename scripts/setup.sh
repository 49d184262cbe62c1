#!/usr/bin/env bash
# Sets qatkit up from nothing on Debian 12 + Python 3.11 (CPU): system packages, torch, Python
# dependencies, then an incremental CMake build installed into python/qatkit (pip -e).
# Re-running is cheap: every step is skipped or incremental when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
TORCH_VERSION=${QATKIT_TORCH_VERSION:-2.13.0}

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
command -v ccache >/dev/null || missing+=(ccache)
command -v g++ >/dev/null || missing+=(g++)
[ -f /usr/include/catch2/catch.hpp ] || missing+=(catch2)
# glibc's locale sources: tests/python/test_cpp_load.py builds de_DE with localedef (a decimal comma)
[ -f /usr/share/i18n/locales/de_DE ] || missing+=(locales)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi
"$PY" -m pip install -q -r scripts/requirements.txt "torch==$TORCH_VERSION"  # torch pinned beside them: never upgraded

echo "setup: building qatkit (incremental, build/py)"
# ccache (CMakeLists.txt's compiler launcher) keyed on paths relative to the checkout, so a fresh
# clone on a machine that built qatkit before reuses its objects (the compiles are ~560 CPU-seconds,
# most of a cold setup on 2 cores); the precompiled headers of the C++ tests become cacheable too.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$PWD}" CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros}"
QATKIT_BUILD_TESTS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import qatkit, json; print('setup: qatkit', json.dumps(qatkit.build_info()))"
