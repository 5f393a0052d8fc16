"""Typed configuration of the data section of a recipe (`data.*`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where samples come from and how they are batched.

    `global_batch_size` is the number of samples per optimizer step over all ranks; each rank
    receives `global_batch_size / (world_size * grad_accum)` samples per micro-batch.
    """

    format: str = "memory"  # memory | wds | mds
    name: str = "digits"  # memory datasets: digits | synthetic_images | synthetic_tokens
    train_url: str = ""  # shard directory or fsspec URL (wds / mds)
    val_url: str = ""
    global_batch_size: int = 64
    eval_batch_size: int = 0  # global; 0 = global_batch_size
    num_workers: int = 0
    seed: int = 0
    val_fraction: float = 0.2  # memory datasets: share held out for evaluation
    seq_len: int = 64  # token datasets: tokens per sequence
