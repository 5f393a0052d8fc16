"""Steps/s and per-rank bytes of one LM at three 4-rank meshes on CPU (gloo), same global batch.

    python bench/bench_mesh.py [--steps 30] [--width 128]

Runs `pretrain train` under torchrun at dp_shard=4, (dp_shard=2, tp=2) and
(dp_replicate=2, dp_shard=2); reports the trainer's own throughput over the steps after the
first log window (compilation-free warm-up excluded) and model_stats.json's per-rank parameter
and optimizer bytes, measured and as the mesh predicts them. One run each: on a shared 2-core
machine note `cat /proc/loadavg` with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.local import train_command  # noqa: E402
from pretrain.run_dir import read_metrics  # noqa: E402

MESHES = {
    "dp_shard=4": [],
    "dp_shard=2,tp=2": ["parallel.mesh.dp_shard=2", "parallel.mesh.tp=2"],
    "dp_replicate=2,dp_shard=2": ["parallel.mesh.dp_replicate=2", "parallel.mesh.dp_shard=2"],
}


def run(name: str, extra: list[str], args: argparse.Namespace, root: Path) -> dict:
    run_dir = root / name.replace(",", "_").replace("=", "")
    overrides = [
        f"model.width={args.width}", "model.depth=4", "model.num_heads=4",
        "model.attn_entropy=false", "data.seq_len=64", "model.lm.seq_len=64",
        "data.global_batch_size=16", f"schedule.steps={args.steps}", "logging.every_steps=5",
        "logging.eval_every_steps=0", "logging.progress_bar=false", "logging.tensorboard=false",
        "checkpoint.every_steps=0", "checkpoint.save_at_end=false", "parallel.backend=fsdp2",
        f"run.dir={run_dir}", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    subprocess.run(train_command(4, "configs/lm_bytes.yaml", overrides), cwd=REPO, env=env,
                   check=True, capture_output=True)
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"][1:]  # after warm-up
    stats = json.loads((run_dir / "model_stats.json").read_text())
    rank0 = stats["per_rank"][0]
    return {"mesh": name, "steps_per_s": len(train) / sum(r["step_time"] for r in train),
            "param_MiB": rank0["param_bytes"] / 2**20,
            "param_MiB_predicted": rank0["param_bytes_predicted"] / 2**20,
            "optim_MiB": rank0["optim_bytes"] / 2**20,
            "optim_MiB_predicted": rank0["optim_bytes_predicted"] / 2**20,
            "params": stats["params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(name, extra, args, Path(tmp)) for name, extra in MESHES.items()]
    print(f"LM width {args.width}, depth 4, {rows[0]['params'] / 1e6:.2f}M parameters, "
          "global batch 16 x 64 tokens, fp32, 4 gloo ranks")
    print("| mesh | steps/s | params MiB/rank (predicted) | optimizer MiB/rank (predicted) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mesh']} | {r['steps_per_s']:.2f} | {r['param_MiB']:.3f} "
              f"({r['param_MiB_predicted']:.3f}) | {r['optim_MiB']:.3f} "
              f"({r['optim_MiB_predicted']:.3f}) |")
    with open("/proc/loadavg") as f:
        print("loadavg:", f.read().strip())


if __name__ == "__main__":
    main()
