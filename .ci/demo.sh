#!/usr/bin/env bash
# The main job on its embedded default: install, then train the small ViT on the bundled digits
# with FSDP2 on 2 CPU processes. Extra arguments are recipe overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
exec .venv/bin/pretrain launch local --nproc 2 configs/vit_digits.yaml "$@"
