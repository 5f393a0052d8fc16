"""Checkpoint save speed: a pretrain checkpoint (DCP through Checkpointer) vs torch.save.

Every kind writes model + AdamW state to the same disk and fsyncs it:
  ours        Checkpointer.save (state dict, DCP shards, RNG, manifest, atomic commit)
  torch       torch.save of the same tensors (prepared beforehand) to one file
  dcp_stock   torch's dcp.save with its stock FileSystemWriter (the raw library)
  torch_wb    torch.save through our write-behind file (pretrain/checkpoint/writeback.py)
  async       how long Checkpointer.save(async) blocks the loop
The order rotates every round and `os.sync()` runs before each timed save, so one save's
write-back does not land in the next one's timing. Then the load: `verify` (every file's
checksum against the manifest, what a resume does first) and `load` (Checkpointer.load: DCP
read into the engine + RNG), both from the page cache, alternating. Run:
  python bench/bench_checkpoint.py [--width 512 --depth 8 --repeats 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.checkpoint import Checkpointer, latest_complete, verify_checkpoint  # noqa: E402
from pretrain.checkpoint.writeback import WritebackFile  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.dist import init_distributed  # noqa: E402
from pretrain.engines import build_engine  # noqa: E402
from pretrain.models import build_model, get_family  # noqa: E402


def tensor_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


def torch_save_fsync(state: dict, path: Path, writeback: bool = False) -> None:
    with WritebackFile(path) if writeback else open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    cfg = load_config(
        None, [f"model.width={args.width}", f"model.depth={args.depth}", "model.num_heads=8"]
    )
    env = init_distributed("cpu")
    model = build_model(cfg.model)
    engine = build_engine(
        model,
        get_family("vit").loss,
        env,
        parallel=cfg.parallel,
        optim=cfg.optim,
        model_cfg=cfg.model,
        global_batch_size=cfg.data.global_batch_size,
    )
    batch = {"image": torch.randn(4, 1, 8, 8), "label": torch.randint(0, 10, (4,))}
    engine.train_step([batch])  # materialise the optimizer state
    state = engine.state_dict()
    nbytes = tensor_bytes(state)

    def save(kind: str, run_dir: Path) -> float:
        t0 = time.perf_counter()
        if kind.startswith("torch"):
            torch_save_fsync(state, run_dir / "state.pt", writeback=kind == "torch_wb")
        elif kind == "dcp_stock":
            dcp.save(engine.state_dict(), storage_writer=FileSystemWriter(str(run_dir)))
        else:
            ckpt = Checkpointer(run_dir, env, keep_last=1, use_async=kind == "async")
            ckpt.save(1, engine, {"step": 1})
            blocked = time.perf_counter() - t0
            ckpt.close()  # waits for the write; frees the async stager's buffers
            return blocked
        return time.perf_counter() - t0

    kinds = ["ours", "torch", "async", "dcp_stock", "torch_wb"]
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        for rep in range(args.repeats):
            for kind in (
                kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
            ):  # rotate: none always first
                run_dir = root / f"{kind}{rep}"
                run_dir.mkdir()
                os.sync()  # the previous save's write-back must not land in this one's timing
                seconds[kind].append(save(kind, run_dir))
                shutil.rmtree(run_dir)
        load_s, verify_s = measure_load(engine, env, root / "load", args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in seconds.items()}
    mb_per_s = {k: round(nbytes / median[k] / 1e6, 1) for k in kinds if k != "async"}
    # Saves of one round ran back to back and share the disk's mood; the median of per-round
    # ratios is the figure least moved by the stalls that hit single saves on a shared VM.
    per_round = statistics.median(t / o for t, o in zip(seconds["torch"], seconds["ours"]))
    print(
        json.dumps(
            {
                "state_MB": round(nbytes / 1e6, 1),
                "repeats": args.repeats,
                "MB_per_s": mb_per_s,
                "ours_vs_torch_save": round(median["torch"] / median["ours"], 3),
                "ours_vs_torch_save_per_round": round(per_round, 3),
                "ours_vs_dcp_stock": round(median["dcp_stock"] / median["ours"], 3),
                "sync_save_s": round(median["ours"], 3),
                "async_blocked_s": round(median["async"], 3),
                "async_blocked_fraction": round(median["async"] / median["ours"], 3),
                "load_s": round(load_s, 3),
                "verify_s": round(verify_s, 3),
                "verify_fraction_of_load": round(verify_s / load_s, 3),
            }
        )
    )


def measure_load(engine, env, run_dir: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of verifying a checkpoint's checksums and of loading it (page cache)."""
    run_dir.mkdir()
    ckpt = Checkpointer(run_dir, env, keep_last=1)
    ckpt.save(1, engine, {"step": 1, "world_size": 1})
    path = latest_complete(run_dir / "checkpoints")
    load, verify = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        assert verify_checkpoint(path) is None
        t1 = time.perf_counter()
        ckpt.load(path, engine, seed=0)
        t2 = time.perf_counter()
        verify.append(t1 - t0)
        load.append(t2 - t1)
    return statistics.median(load), statistics.median(verify)


if __name__ == "__main__":
    main()
