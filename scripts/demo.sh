#!/usr/bin/env bash
# Set up, then run the main job: platform up, stack.yml deployed, load driven, report shown.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec fastgshare demo -f stack.yml "$@"
