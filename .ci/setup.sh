#!/usr/bin/env bash
# Create .venv (if needed) and install the project with the pinned CPU torch. Idempotent: skips
# pip when pyproject.toml and the constraints are unchanged since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pretrain-installed
want=$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first, from the pin, so nothing below can pull a CUDA build.
  .venv/bin/pip install -q -c .ci/constraints.txt torch
  .venv/bin/pip install -q -c .ci/constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
