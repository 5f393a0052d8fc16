"""The global sample order: a pure function of (seed, epoch, global position).

The stream is the concatenation of one permutation per epoch. Position `g` of the stream is
sample `perm(seed, g // n)[g % n]`. A loader's state is just `g`, the number of samples consumed
by all ranks together, so it does not depend on world size or worker count.
"""

from __future__ import annotations

import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """A fixed permutation of range(num_samples) for this (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(num_samples)


def rank_slice(global_start: int, global_batch: int, rank: int, world_size: int) -> range:
    """Global stream positions owned by `rank` within the batch starting at `global_start`."""
    if global_batch % world_size:
        raise ValueError(f"batch of {global_batch} samples does not split across {world_size} ranks")
    per_rank = global_batch // world_size
    start = global_start + rank * per_rank
    return range(start, start + per_rank)
