#!/usr/bin/env bash
# Set up, then run the whole default test suite: lint, architecture contracts, pytest.
# Tests start their own Redis (embedded Valkey) on free loopback ports; no service is assumed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# docker-compose (Debian) validates docker-compose.yml offline; optional outside CI.
if ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null 2>&1 \
    || echo "[test] docker-compose not installed; its validation test will be skipped"
fi
echo "[test] ruff"
ruff check .
echo "[test] import-linter"
lint-imports
echo "[test] mypy (strict: the pure cores and the provider client, pyproject.toml)"
mypy
echo "[test] pytest"
python -m pytest -p no:cacheprovider "$@"
