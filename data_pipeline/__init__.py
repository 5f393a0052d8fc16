"""Data pipeline: shard writers, readers and the resumable loader contract.

The trainer only sees `build_loader(cfg, rank, world_size, split, grad_accum)`:
- split="train": an endless iterator of this rank's micro-batches in the global order
  (a pure function of seed, epoch and global sample position), with `state_dict()` returning a
  JSON-serialisable position and `load_state_dict(state)` restoring it, at any world size.
  With data.budget_samples / budget_tokens it stops after that many samples (whole steps).
- split="val": one pass; every rank yields the same number of batches; padding rows carry
  IGNORE_INDEX targets and sample_id -1.
Batches are dicts of tensors: images {"image": float [B,C,H,W], "label": long [B]}, tokens
{"tokens": long [B,L], "targets": long [B,L]} (+ "position_ids"/"doc_ids" with
data.packing_boundaries); every batch carries "sample_id": long [B]. With data.patch_pack
(NaViT), images come as packed patch sequences: see `data_pipeline/navit.py`.
Sharded loaders also offer `metrics()` ({"data/bad_samples", "data/epoch"}) for the logs.
Formats: memory (digits, synthetic), wds (WebDataset tar shards), mds (MosaicML streaming).
"""

from __future__ import annotations

from data_pipeline.config import IGNORE_INDEX, DataConfig

__all__ = ["DataConfig", "IGNORE_INDEX", "build_loader"]


def build_loader(cfg: DataConfig, rank: int, world_size: int, split: str = "train", grad_accum: int = 1):
    """The loader for one split on one rank (see the module docstring for the contract)."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: choose train or val")
    if cfg.format == "memory" and cfg.name == "text":
        from data_pipeline.text_memory import TextEvalLoader, TextTrainLoader

        if split == "train":
            return TextTrainLoader(cfg, rank, world_size, grad_accum)
        return TextEvalLoader(cfg, rank, world_size)
    if cfg.format == "memory":  # imported here: `pretrain data --help` should not load torch
        from data_pipeline.memory import MemoryEvalLoader, MemoryTrainLoader

        if split == "train":
            return MemoryTrainLoader(cfg, rank, world_size, grad_accum)
        return MemoryEvalLoader(cfg, rank, world_size)
    if cfg.format in ("wds", "mds"):
        from data_pipeline.loader import ShardedEvalLoader, ShardedTrainLoader

        if split == "train":
            return ShardedTrainLoader(cfg, rank, world_size, grad_accum)
        return ShardedEvalLoader(cfg, rank, world_size)
    raise ValueError(f"data.format={cfg.format!r} is not supported (memory, wds, mds)")
