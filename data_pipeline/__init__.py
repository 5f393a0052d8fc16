"""Data pipeline: shard writers, readers and the resumable loader contract.

The trainer only sees `build_loader(cfg, rank, world_size, split, grad_accum)`, which returns a
`contract.TrainLoader` (split="train") or a `contract.EvalLoader` (split="val"):
- train: an endless iterator of this rank's micro-batches in the global order (`order.py`: a
  pure function of seed, epoch and global sample position), with `state_dict()` returning a
  JSON-serialisable position and `load_state_dict(state)` restoring it, at any world size, and
  `metrics()` ({"data/bad_samples", "data/epoch"}) for the logs. With data.budget_samples /
  budget_tokens it stops after that many samples (whole steps).
- val: one pass; every rank yields the same number of batches; padding rows carry
  IGNORE_INDEX targets and sample_id -1.
Batches are dicts of tensors: images {"image": float [B,C,H,W], "label": long [B]}, tokens
{"tokens": long [B,L], "targets": long [B,L]} (+ "position_ids"/"doc_ids" with
data.packing_boundaries); every batch carries "sample_id": long [B]. With data.patch_pack
(NaViT), images come as packed patch sequences: see `data_pipeline/navit.py`.
Formats: memory (digits, synthetic, text), wds (WebDataset tar shards), mds (MosaicML streaming).
See README.md in this folder for the layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_pipeline.config import IGNORE_INDEX, DataConfig

if TYPE_CHECKING:
    from data_pipeline.contract import BatchSource, EvalLoader, TrainLoader

__all__ = ["DataConfig", "IGNORE_INDEX", "build_loader"]


def build_source(cfg: DataConfig, split: str) -> tuple[BatchSource, int]:
    """The batch source of one split and the DataLoader workers it wants (in-memory sources build
    batches by indexing arrays: workers would only add copies)."""
    # imported here: `pretrain data --help` should not load torch
    if cfg.format == "memory" or cfg.patch_pack:
        from data_pipeline.augment import augment_keys_set

        ignored = augment_keys_set(cfg)
        if ignored:
            raise ValueError(f"{ignored[0]} applies to wds/mds image shards without"
                             " data.patch_pack; this recipe would ignore it")
    if cfg.format == "memory" and cfg.name == "text":
        from data_pipeline.text_memory import TextSource

        return TextSource(cfg, split), 0
    if cfg.format == "memory":
        from data_pipeline.memory import memory_source

        return memory_source(cfg, split), 0
    if cfg.format in ("wds", "mds"):
        from data_pipeline.sharded import ShardedBatches

        return ShardedBatches(cfg, train=split == "train"), cfg.loader_workers
    raise ValueError(f"data.format={cfg.format!r} is not supported (memory, wds, mds)")


def build_loader(cfg: DataConfig, rank: int, world_size: int, split: str = "train",
                 grad_accum: int = 1) -> TrainLoader | EvalLoader:
    """The loader for one split on one rank (see the module docstring for the contract)."""
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: choose train or val")
    if cfg.tokenizer and cfg.format in ("wds", "mds"):
        return _raw_text_loader(cfg, rank, world_size, split, grad_accum)
    source, workers = build_source(cfg, split)
    from data_pipeline.stream import SourceEvalLoader, SourceTrainLoader

    if split == "train":
        return SourceTrainLoader(source, cfg, rank, world_size, grad_accum, workers)
    return SourceEvalLoader(source, cfg, rank, world_size, workers)


def _raw_text_loader(cfg: DataConfig, rank: int, world_size: int, split: str,
                     grad_accum: int) -> TrainLoader | EvalLoader:
    """Raw-text shards tokenized on the fly (`raw_text.py`); validation is packed once."""
    from data_pipeline.raw_text import PackedRowsSource, RawTextTrainLoader, raw_text_eval_arrays

    if split == "train":
        return RawTextTrainLoader(cfg, rank, world_size, grad_accum)
    from data_pipeline.stream import SourceEvalLoader

    source = PackedRowsSource(raw_text_eval_arrays(cfg), cfg.seed, False, cfg.seq_len)
    return SourceEvalLoader(source, cfg, rank, world_size, 0)
