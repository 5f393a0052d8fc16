"""torchrun worker for tests/test_device_groups.py: one collective scenario per mode.

    today    a group whose only backend serves cuda (`cuda:gloo`, what an nccl-only group is
             to a CPU tensor), and the call sites as they were: each must raise
    fixed    the group init_distributed builds for a CUDA run, gloo standing in for NCCL
             (group_backend("cuda", "gloo")), and the call sites as they are now
    timeout  rank 1 never joins: rank 0's collective fails naming rank, op and step
    skip_fsdp2  the trainer on 2 FSDP2 ranks, loss NaN at steps 5 and 6, optim.on_nonfinite=skip

Each rank writes OUT/rank<N>.json with what it saw.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from data_pipeline import build_loader
from pretrain.agreement import Agreement, DivergenceGuard, Requests
from pretrain.checkpoint import Checkpointer, latest_complete
from pretrain.config import load_config
from pretrain.dist import (
    CollectiveTimeout,
    DistEnv,
    all_reduce_max,
    all_reduce_sum,
    group_backend,
    note_step,
)
from pretrain.engines.base import Engine
from pretrain.models import build_model, get_family
from pretrain.step import evaluate

REPO = Path(__file__).resolve().parent.parent


def tiny_engine(env: DistEnv, run_dir: Path):
    cfg = load_config(REPO / "configs/vit_digits.yaml", [
        "model.width=16", "model.depth=1", "model.num_heads=2", "data.format=memory",
        "data.name=synthetic_images", "data.global_batch_size=8", f"run.dir={run_dir}",
    ])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    engine = Engine(model, get_family(cfg.model.family).loss, env, parallel=cfg.parallel,
                    optim=cfg.optim, model_cfg=cfg.model, global_batch_size=8)
    return cfg, engine


def attempt(fn) -> str:
    try:
        fn()
    except RuntimeError as e:
        return str(e).splitlines()[0]
    return "ok"


def today(env: DistEnv, run_dir: Path) -> dict:
    cfg, engine = tiny_engine(env, run_dir)
    loader = build_loader(cfg.data, env.rank, env.world_size, "val")

    def agree():  # Requests.agree: CPU flags
        all_reduce_max(torch.tensor([0.0, 1.0]))

    def evaluate_sums():  # evaluate: .cpu() sums, then the all-reduce
        sums = {k: v.cpu() for k, v in engine.eval_step(next(iter(loader))).items()}
        all_reduce_sum(torch.stack([sums[k] for k in sorted(sums)]))

    def poll():  # Checkpointer.poll: a CPU not-done flag
        all_reduce_max(torch.tensor([0.0])).item()

    return {"agree": attempt(agree), "evaluate": attempt(evaluate_sums), "poll": attempt(poll)}


def fixed(env: DistEnv, run_dir: Path) -> dict:
    cfg, engine = tiny_engine(env, run_dir)
    requests = Requests(run_dir, env)
    requests.save = env.rank == 1  # a save request raised on one rank only
    agreement = Agreement(requests, DivergenceGuard("fail", 0, env.device), 10, env.device)
    agreed = agreement.agree(1)
    loader = build_loader(cfg.data, env.rank, env.world_size, "val")
    results = evaluate(engine, loader, 2)
    ckpt = Checkpointer(run_dir, env, keep_last=2, use_async=True)
    ckpt.save(1, engine, {"step": 1, "samples": 8})
    polls = 0
    while ckpt.pending is not None and polls < 1000:
        ckpt.poll()
        polls += 1
        time.sleep(0.01)
    committed = latest_complete(run_dir / "checkpoints")
    ckpt.close()
    return {"stop": agreed.stop, "save": agreed.save, "eval_loss": results["loss"],
            "committed": committed.name if committed else None}


def timeout(env: DistEnv, run_dir: Path) -> dict:
    if env.rank == 1:
        time.sleep(8)  # never joins the collective
        return {}
    note_step(7)
    try:
        all_reduce_max(torch.zeros(2), "all_reduce(stop/save agreement)")
    except CollectiveTimeout as e:
        return {"error": str(e)}
    return {"error": None}


def skip_fsdp2(env: DistEnv, run_dir: Path) -> dict:
    from pretrain.checkpoint import read_model_tensors
    from pretrain.run_dir import read_metrics, read_status
    from pretrain.trainer import train
    from tests.conftest import TINY
    from tests.test_divergence_guard import COMMON, nan_loss_at

    overrides = [*TINY, *COMMON, "parallel.backend=fsdp2", "optim.on_nonfinite=skip",
                 f"run.dir={run_dir}"]
    with nan_loss_at({5, 6}):
        train(load_config(REPO / "configs/vit_digits.yaml", overrides))
    dist.barrier()
    ckpts = run_dir / "checkpoints"
    a, b = read_model_tensors(ckpts / "step_00000004"), read_model_tensors(ckpts / "step_00000006")
    train_records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    return {"state": read_status(run_dir)["state"],
            "unchanged": all(torch.equal(a[k], b[k]) for k in a),
            "skipped_steps": train_records[-1]["skipped_steps"]}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    backend = {"today": "cuda:gloo", "fixed": group_backend("cuda", "gloo"), "timeout": "gloo",
               "skip_fsdp2": "gloo"}
    timeout_s = 3 if mode == "timeout" else 120
    dist.init_process_group(backend=backend[mode], timeout=timedelta(seconds=timeout_s))
    rank = dist.get_rank()
    env = DistEnv(rank, dist.get_world_size(), int(os.environ["LOCAL_RANK"]), torch.device("cpu"))
    modes = {"today": today, "fixed": fixed, "timeout": timeout, "skip_fsdp2": skip_fsdp2}
    result = modes[mode](env, out / "run")
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if mode != "timeout" and dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)  # a timed-out group cannot be torn down cleanly


if __name__ == "__main__":
    main()
