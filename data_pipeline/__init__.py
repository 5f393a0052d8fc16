"""Data pipeline: shard writers, readers and the resumable loader contract.

The trainer only sees `build_loader(cfg, rank, world_size, split, grad_accum)`:
- split="train": an endless iterator of this rank's micro-batches in the global order
  (a pure function of seed, epoch and global sample position), with `state_dict()` returning a
  JSON-serialisable position and `load_state_dict(state)` restoring it, at any world size.
- split="val": one pass; every rank yields the same number of batches; padding rows carry
  IGNORE_INDEX targets.
Batches are dicts of tensors: images {"image": float [B,C,H,W], "label": long [B]}, tokens
{"tokens": long [B,L], "targets": long [B,L]}; every batch carries "sample_id": long [B].
"""

from __future__ import annotations

from data_pipeline.config import DataConfig
from data_pipeline.memory import IGNORE_INDEX, MemoryEvalLoader, MemoryTrainLoader

__all__ = ["DataConfig", "IGNORE_INDEX", "build_loader"]


def build_loader(cfg: DataConfig, rank: int, world_size: int, split: str = "train", grad_accum: int = 1):
    """The loader for one split on one rank (see the module docstring for the contract)."""
    if cfg.format == "memory":
        if split == "train":
            return MemoryTrainLoader(cfg, rank, world_size, grad_accum)
        return MemoryEvalLoader(cfg, rank, world_size)
    raise ValueError(f"data.format={cfg.format!r} is not supported (memory)")
