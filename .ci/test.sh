#!/usr/bin/env bash
# The whole test suite from nothing: venv + pinned torch + packages, Slurm from Debian where
# missing, then lint and pytest (the 40 slowest tests listed at the end). Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
if [ -f slurm/install.sh ]; then
  bash slurm/install.sh
fi
.venv/bin/ruff check .
export OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -ra --durations=40 "$@"
