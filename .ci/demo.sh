#!/usr/bin/env bash
# The main job on its embedded default: install, write the bundled digits into WebDataset shards
# (once), then train the small ViT from them with FSDP2 on 2 CPU processes.
# Extra arguments are recipe overrides (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh
if [ ! -f data/digits-wds/val/manifest.json ]; then
  .venv/bin/pretrain data build digits --format wds --out data/digits-wds --shard-samples 200
fi
exec .venv/bin/pretrain launch local --nproc 2 configs/vit_digits.yaml "$@"
