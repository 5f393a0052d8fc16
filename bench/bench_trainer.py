"""Trainer overhead: steps/s of the `pretrain` training loop vs a plain PyTorch loop.

Same model, optimizer groups, global batch and number of processes, alternated in one process
(plain first on even repeats, pretrain first on odd ones) so machine noise and warm caches hit
both alike. Every trainer run gets a fresh run directory (metrics.jsonl is appended to, so a
reused one would average in an earlier run's step times). Run:
    python bench/bench_trainer.py                                   # 1 process
    torchrun --standalone --nproc_per_node 2 bench/bench_trainer.py --backend fsdp2
The plain loop draws batches by index from in-memory tensors; the trainer goes through its
resumable loader, logging (JSONL + TensorBoard), signal agreement and LR schedule. Both read
the loss back at log steps only. Checkpoints and evaluation are off in both (they are
benchmarked separately).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline import build_loader  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.dist import init_distributed  # noqa: E402
from pretrain.engines.fsdp2 import apply_fsdp  # noqa: E402
from pretrain.models import build_model  # noqa: E402
from pretrain.optim import build_optimizer  # noqa: E402
from pretrain.run_dir import read_metrics  # noqa: E402
from pretrain.trainer import train  # noqa: E402

WARMUP = 5


def bench_config(backend: str, steps: int, run_dir: str):
    return load_config(None, [
        "model.width=256", "model.depth=4", "model.num_heads=4", "model.vit.patch_size=1",
        "data.format=memory", "data.name=synthetic_images", "data.global_batch_size=32",
        f"schedule.steps={steps}", "schedule.warmup_steps=2", f"parallel.backend={backend}",
        "checkpoint.every_steps=0", "checkpoint.save_at_end=false", "checkpoint.resume=none",
        "logging.eval_every_steps=0", "logging.progress_bar=false", f"logging.every_steps={WARMUP}",
        f"run.dir={run_dir}",
    ])


def plain_loop(cfg, env) -> float:
    """Steps/s of a hand-written loop (after WARMUP steps)."""
    torch.manual_seed(0)
    model = build_model(cfg.model)
    kinds = model.param_kinds()
    if cfg.parallel.backend == "fsdp2":
        apply_fsdp(model, init_device_mesh("cpu", (env.world_size,)), bf16=False,
                   reshard_after_forward=True)
    opt = build_optimizer(model, kinds, cfg.optim, cfg.model)
    loader = build_loader(cfg.data, env.rank, env.world_size)  # only for the arrays
    images = torch.from_numpy(loader.source.arrays["image"])
    labels = torch.from_numpy(loader.source.arrays["label"])
    per_rank = cfg.data.global_batch_size // env.world_size
    gen = torch.Generator().manual_seed(env.rank)
    t0 = 0.0
    for step in range(cfg.schedule.steps):
        if step == WARMUP:
            t0 = time.perf_counter()
        idx = torch.randint(len(images), (per_rank,), generator=gen)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % WARMUP == 0:
            float(loss.detach())  # read back at log steps, as the trainer does
    return (cfg.schedule.steps - WARMUP) / (time.perf_counter() - t0)


def trainer_loop(cfg) -> float:
    """Steps/s of pretrain's loop over the same steps (from its own step timings)."""
    train(cfg)
    records = [r for r in read_metrics(cfg.run_dir) if r["split"] == "train"]
    records = records[1:]  # drop the warm-up window
    return len(records) / sum(r["step_time"] for r in records) if records else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", default="single", choices=["single", "ddp", "fsdp2"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = init_distributed("cpu", need_group=args.backend != "single")
    import logging

    logging.disable(logging.INFO)
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = [tmp]  # one fresh directory per invocation, rank 0's, shared by all ranks
        if dist.is_initialized():
            dist.broadcast_object_list(root, src=0)
        for rep in range(args.repeats):
            cfg = bench_config(args.backend, args.steps, f"{root[0]}/rep{rep}")
            if rep % 2 == 0:
                plain.append(plain_loop(cfg, env))
                ours.append(trainer_loop(cfg))
            else:
                ours.append(trainer_loop(cfg))
                plain.append(plain_loop(cfg, env))
        if dist.is_initialized():
            dist.barrier()  # rank 0 removes the directory only once every rank is done
    if env.is_main:
        result = {
            "backend": args.backend,
            "processes": env.world_size,
            "plain_steps_per_s": statistics.median(plain),
            "pretrain_steps_per_s": statistics.median(ours),
            "ratio": statistics.median(ours) / statistics.median(plain),
            "repeats": args.repeats,
            "steps": args.steps,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
