#!/usr/bin/env bash
# The scheduled upgrade: refresh every lock to today's releases, reinstall, run the whole suite,
# and commit the locks only when it passes. Run it weekly (cron, or a CI schedule); a release that
# breaks the suite then shows up as a red refresh, never as a red fresh install.
#   bash scripts/refresh_lock.sh [--no-commit]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python scripts/lock.py --upgrade
if git diff --quiet -- requirements function_templates/python3-torch/requirements.lock; then
  echo "[refresh] the locks did not change"; exit 0
fi
git diff --stat -- requirements function_templates/python3-torch/requirements.lock
bash scripts/setup.sh          # installs the new lock (it is newer than the stamp)
bash scripts/test.sh
if [[ "${1:-}" != "--no-commit" ]]; then
  git commit -m "lock: scheduled refresh ($(date -u +%F)), suite green" -- \
    requirements function_templates/python3-torch/requirements.lock
fi
