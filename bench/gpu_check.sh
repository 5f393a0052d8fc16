#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): ViT-B/16, DiT-XL/2 and a ~1B LM against plain PyTorch
# loops, checkpoint save rate, and the real trainer (FSDP2, DDP) under NCCL at world size 1.
#   bash bench/gpu_check.sh --steps 30 --warmup 8 --deadline 300 --out results.json
#                                                   # one H200: every section in 302 s (measured)
#   bash bench/gpu_check.sh --only trainer_fsdp2,lm_1b_2048   # a subset of the sections
#   bash bench/gpu_check.sh --tiny                  # toy sizes on a CPU (the test suite runs it)
# deepspeed, webdataset and streaming are blocked from import: the GPU image lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/bench/gpu_check_blocker:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
