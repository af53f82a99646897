#!/usr/bin/env bash
# Create .venv and install the project with everything its code and tests import. Idempotent.
# torch is installed first, pinned, so no other package can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  pip install -q --disable-pip-version-check torch==2.13.0
fi
if [ ! -f .venv/.installed ] || [ setup.py -nt .venv/.installed ]; then
  echo "[setup] installing fastgshare and its dependencies"
  pip install -q --disable-pip-version-check -e '.[dev,models]'
  # orcbench (Azure-Functions-like trace models) pins numpy<2, which would break torch and
  # matplotlib here; only its shipped model data is used, so install it without its pins.
  pip install -q --disable-pip-version-check --no-deps 'orcbench==0.1.4'
  touch .venv/.installed
fi
