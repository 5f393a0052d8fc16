"""Checkpoint save speed: DCP (through pretrain's Checkpointer) vs torch.save of the same tensors.

Both write model + AdamW state to the same directory's disk and fsync; the order rotates every
repeat and `os.sync()` runs before each timed save, so one save's write-back does not land in the
next one's timing. Also measures how long the training loop is blocked by an async save relative to a
synchronous one. Run:  python bench/bench_checkpoint.py [--width 512 --depth 8]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pretrain.checkpoint import Checkpointer  # noqa: E402
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


def torch_save_fsync(state: dict, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    cfg = load_config(None, [f"model.width={args.width}", f"model.depth={args.depth}", "model.num_heads=8"])
    env = init_distributed("cpu")
    model = build_model(cfg.model)
    engine = build_engine(model, get_family("vit").loss, cfg, env)
    batch = {"image": torch.randn(4, 1, 8, 8), "label": torch.randint(0, 10, (4,))}
    engine.train_step([batch])  # materialise the optimizer state
    state = engine.state_dict()
    nbytes = tensor_bytes(state)

    root = Path(tempfile.mkdtemp(dir=args.dir))
    sync_s, torch_s, async_block_s = [], [], []
    try:
        kinds = ["dcp", "torch", "async"]
        for rep in range(args.repeats):
            for kind in kinds[rep % 3:] + kinds[: rep % 3]:  # rotate: no kind always goes first
                run_dir = root / f"{kind}{rep}"
                run_dir.mkdir()
                os.sync()  # the previous save's write-back must not land in this one's timing
                t0 = time.perf_counter()
                if kind == "torch":
                    torch_save_fsync(state, run_dir / "state.pt")
                    torch_s.append(time.perf_counter() - t0)
                else:
                    ckpt = Checkpointer(run_dir, env, keep_last=1, use_async=kind == "async")
                    ckpt.save(1, engine, {"step": 1})
                    blocked = time.perf_counter() - t0
                    ckpt.wait()
                    (sync_s if kind == "dcp" else async_block_s).append(blocked)
                shutil.rmtree(run_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    dcp_bps, torch_bps = nbytes / statistics.median(sync_s), nbytes / statistics.median(torch_s)
    print(json.dumps({
        "state_MB": round(nbytes / 1e6, 1),
        "dcp_MB_per_s": round(dcp_bps / 1e6, 1), "torch_save_MB_per_s": round(torch_bps / 1e6, 1),
        "dcp_vs_torch_save": round(dcp_bps / torch_bps, 3),
        "sync_save_s": round(statistics.median(sync_s), 3), "async_blocked_s": round(statistics.median(async_block_s), 3),
        "async_blocked_fraction": round(statistics.median(async_block_s) / statistics.median(sync_s), 3),
    }))


if __name__ == "__main__":
    main()
