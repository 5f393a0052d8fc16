"""The loader contract: what the trainer may rely on, and what a dataset supplies to get it.

`build_loader` returns a `TrainLoader` or an `EvalLoader`; both are implemented once, in
`stream.py`, over any `BatchSource` (in-memory arrays, the text corpus, wds/mds shards). Which
positions a rank reads and in what order lives in `order.py`; a source only turns positions of
its stream into a batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


@runtime_checkable
class TrainLoader(Protocol):
    """This rank's micro-batches in the global order: endless, or `stop` samples (whole
    optimizer steps over all ranks) under data.budget_samples / budget_tokens."""

    stop: int  # samples of the whole stream before it ends; 0 = endless
    consumed: int  # the resumable position: samples handed out by all ranks together

    def __iter__(self) -> Iterator[Batch]: ...

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable position in the order, valid at any world size."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; refuses a state of another dataset or seed."""
        ...

    def metrics(self) -> dict[str, float]:
        """Counters for the trainer's logs (data/epoch, data/bad_samples)."""
        ...


@runtime_checkable
class EvalLoader(Protocol):
    """One pass over the validation split; every rank yields `len()` batches, padding rows carry
    sample_id -1 and IGNORE_INDEX targets."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class BatchSource(Protocol):
    """What a dataset supplies: its size, its identity for resumes, and batches of positions.

    Positions are indices into the source's stream (epoch * num_samples + offset for training,
    canonical ids for evaluation, -1 for padding); the source applies its own permutation from
    `order.py`. Sources are picklable: sharded ones build batches in DataLoader workers.
    """

    num_samples: int  # samples in one epoch
    tokens_per_sample: int  # for data.budget_tokens; 0 for non-token datasets

    def identity(self) -> dict[str, Any]:
        """JSON values a saved loader state must match to continue the same order."""
        ...

    def mismatch_hint(self) -> str:
        """Appended to the error when a saved state's identity does not match ("" for none)."""
        ...

    def batch(self, positions: np.ndarray, upcoming: np.ndarray | None) -> Batch:
        """The batch at these positions, with "sample_id" (-1 for padding and skipped samples);
        `upcoming` are the positions this worker reads next (to prefetch), if any."""
        ...

    # Optional: `finish(batch) -> batch`, run in the trainer's process on each batch a worker
    # built (ShardedBatches decodes JPEGs on the GPU there under data.decode_device=cuda).
