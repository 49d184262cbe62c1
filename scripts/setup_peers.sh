#!/usr/bin/env bash
# The peers' environment for scripts/ptq.py's Brevitas rows: Brevitas 0.13.4 imports pkg_resources,
# which setuptools 81 removed, and pinning setuptools < 81 in the main environment would hold back
# everything else. So this makes .venv-peers/, a virtual environment that sees the main one's
# packages (torch 2.13.0, qatkit's editable install, torchao) and adds setuptools < 81 and Brevitas.
#
#   bash scripts/setup.sh && bash scripts/setup_peers.sh
#   .venv-peers/bin/python scripts/ptq.py          # the tables with the Brevitas rows
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv-peers/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv-peers
fi
.venv-peers/bin/python -m pip install -q "setuptools<81" "brevitas==0.13.4"
.venv-peers/bin/python -c "import brevitas, torch, qatkit; print(f'setup_peers: brevitas {brevitas.__version__}, torch {torch.__version__}, qatkit from {qatkit.__file__}')"
