#!/usr/bin/env bash
# Set up .venv with hadmc and everything it needs (idempotent: a no-op when nothing changed).
# torch==2.13.0 goes in first: a CPU build from local disk; a looser requirement would pull CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.hadmc-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[host,dev,openvino,ray]'
  echo "$want" > "$stamp"
fi
