#!/usr/bin/env bash
# Create .venv and install exactly what the lock names (versions and hashes of every package, direct
# and transitive), then the project itself without resolving anything. Idempotent.
# The lock for this Python: requirements/lock-py311.txt (here and CI; torch is its CPU build, found
# in /opt/wheels on this kind of machine or on the PyTorch CPU index elsewhere) or lock-py312.txt
# (GPU machines; they bring their own torch). Refresh: `python scripts/lock.py` (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
PYV=$(python -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
LOCK=requirements/lock-$PYV.txt
if [ ! -f "$LOCK" ]; then
  echo "[setup] no lock for $(python --version): README names Python 3.11 (3.12 on GPU machines)" >&2
  exit 1
fi
PIP=(pip install -q --disable-pip-version-check)
if [ -d /opt/wheels ]; then
  PIP+=(--find-links /opt/wheels)
else
  PIP+=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
STAMP=.venv/.installed-$PYV
if [ ! -f "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ] || [ setup.py -nt "$STAMP" ]; then
  echo "[setup] installing $LOCK (exact versions, hashes checked)"
  "${PIP[@]}" --require-hashes --no-deps -r "$LOCK"
  # orcbench (Azure-Functions-like trace models) pins numpy<2, which would break torch and
  # matplotlib; only its shipped model data is used, so it comes without its pins.
  "${PIP[@]}" --require-hashes --no-deps -r requirements/orcbench.txt
  echo "[setup] installing fastgshare (editable, nothing resolved: the lock has it all)"
  "${PIP[@]}" --no-deps --no-build-isolation -e .
  touch "$STAMP"
fi
