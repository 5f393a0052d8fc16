"""The global sample order: a pure function of (seed, epoch, global position), and the positions
each rank reads.

The stream is the concatenation of one permutation per epoch. Position `g` of the stream is
sample `perm(seed, g // n)[g % n]`. A loader's state is just `g`, the number of samples consumed
by all ranks together, so it does not depend on world size or worker count. `TrainPlan` and
`EvalPlan` say which positions rank r reads in micro-batch k; `rank_slice` cuts a global batch.

For sharded data the per-epoch permutation is shard-aware (`ShardedOrder`): the shards are
permuted, consecutive shards of that permutation form windows of `window` shards, and samples are
shuffled only within their window. Reads then touch `window` shards at a time instead of all.
Several datasets are interleaved by `Mixture`, which is also a pure function of the position.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """A fixed permutation of range(num_samples) for this (seed, epoch)."""
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(num_samples)


def permuted_ids(positions: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Sample ids at these stream positions when every epoch is one flat permutation."""
    positions = np.asarray(positions, np.int64)
    epochs, offsets = positions // num_samples, positions % num_samples
    ids = np.empty(len(positions), np.int64)
    for e in np.unique(epochs):
        mask = epochs == e
        ids[mask] = epoch_permutation(num_samples, seed, int(e))[offsets[mask]]
    return ids


def held_out(num_samples: int, val_fraction: float) -> np.ndarray:
    """Boolean mask of the validation samples: a fixed split (seed 0), independent of data.seed,
    shared by the in-memory datasets and the shard writers so their metrics are comparable."""
    order = epoch_permutation(num_samples, seed=0, epoch=0)
    is_val = np.zeros(num_samples, bool)
    is_val[order[: int(round(num_samples * val_fraction))]] = True
    return is_val


def rank_slice(global_start: int, global_batch: int, rank: int, world_size: int) -> range:
    """Global stream positions owned by `rank` within the batch starting at `global_start`."""
    if global_batch % world_size:
        raise ValueError(
            f"batch of {global_batch} samples does not split across {world_size} ranks"
        )
    per_rank = global_batch // world_size
    start = global_start + rank * per_rank
    return range(start, start + per_rank)


class TrainPlan:
    """Positions of this rank's micro-batch k of the train stream, counted from `start` (the
    resumable position); `num_batches` is None for an endless stream, else what fits in `stop`."""

    def __init__(self, start: int, micro_global: int, rank: int, world_size: int, stop: int):
        self.start, self.micro_global, self.rank, self.world = start, micro_global, rank, world_size
        self.num_batches = None if stop <= 0 else max(0, (stop - start) // micro_global)

    def positions(self, k: int) -> np.ndarray:
        r = rank_slice(self.start + k * self.micro_global, self.micro_global, self.rank, self.world)
        return np.arange(r.start, r.stop, dtype=np.int64)


class EvalPlan:
    """One pass over N samples in canonical order; positions >= N are padding (-1), so every
    rank reads as many batches."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int):
        self.n, self.global_batch = num_samples, global_batch
        self.rank, self.world = rank, world_size
        self.num_batches = -(-num_samples // global_batch)

    def positions(self, k: int) -> np.ndarray:
        r = rank_slice(k * self.global_batch, self.global_batch, self.rank, self.world)
        pos = np.arange(r.start, r.stop, dtype=np.int64)
        return np.where(pos < self.n, pos, -1)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(key)))


class _Epoch:
    """The shard-aware permutation of one epoch, with windows materialised lazily."""

    def __init__(
        self,
        sizes: np.ndarray,
        offsets: np.ndarray,
        seed: int,
        epoch: int,
        window: int,
        shuffle: bool,
    ):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.offsets = offsets
        num_shards = len(sizes)
        self.shard_perm = (
            _rng(seed, epoch, 0).permutation(num_shards) if shuffle else np.arange(num_shards)
        )
        self.window = max(1, window)
        starts = np.arange(0, num_shards, self.window)
        perm_sizes = sizes[self.shard_perm]
        self.window_ends = (
            np.cumsum(np.add.reduceat(perm_sizes, starts)) if num_shards else np.zeros(0, np.int64)
        )
        self._cache: dict[int, np.ndarray] = {}

    def _window_ids(self, w: int) -> np.ndarray:
        """Canonical sample ids of window `w`, in their shuffled order."""
        ids = self._cache.get(w)
        if ids is None:
            shards = self.shard_perm[w * self.window : (w + 1) * self.window]
            ids = np.concatenate([np.arange(self.offsets[s], self.offsets[s + 1]) for s in shards])
            if self.shuffle:
                ids = ids[_rng(self.seed, self.epoch, 1, w).permutation(len(ids))]
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[w] = ids
        return ids

    def ids(self, offsets: np.ndarray) -> np.ndarray:
        windows = np.searchsorted(self.window_ends, offsets, side="right")
        out = np.empty(len(offsets), np.int64)
        for w in np.unique(windows):
            mask = windows == w
            start = self.window_ends[w - 1] if w > 0 else 0
            out[mask] = self._window_ids(int(w))[offsets[mask] - start]
        return out


class ShardedOrder:
    """Stream position -> canonical sample id, for a dataset of shards with these sizes."""

    def __init__(self, shard_sizes: list[int], seed: int, window: int = 4, shuffle: bool = True):
        self.sizes = np.asarray(shard_sizes, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.num_samples = int(self.offsets[-1])
        if self.num_samples == 0:
            raise ValueError("dataset has no samples")
        self.seed, self.window, self.shuffle = seed, window, shuffle

    @lru_cache(maxsize=2)  # noqa: B019 - a few epochs per order object, freed with it
    def epoch(self, epoch: int) -> _Epoch:
        return _Epoch(self.sizes, self.offsets, self.seed, epoch, self.window, self.shuffle)

    def ids(self, positions: np.ndarray) -> np.ndarray:
        """Canonical ids at these stream positions (position = epoch * num_samples + offset)."""
        positions = np.asarray(positions, np.int64)
        epochs, offs = positions // self.num_samples, positions % self.num_samples
        out = np.empty(len(positions), np.int64)
        for e in np.unique(epochs):
            mask = epochs == e
            out[mask] = self.epoch(int(e)).ids(offs[mask])
        return out

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, index within shard) of canonical ids."""
        shards = np.searchsorted(self.offsets, ids, side="right") - 1
        return shards, ids - self.offsets[shards]


def block_counts(weights: list[float], block: int) -> np.ndarray:
    """Samples per dataset in a block of `block` positions, by largest remainder (ties: lower
    index first), so proportions are exact up to one sample per block."""
    w = np.asarray(weights, np.float64)
    if len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"mixing weights must be non-negative with a positive sum, got {weights}")
    quota = w / w.sum() * block
    counts = np.floor(quota).astype(np.int64)
    rest = block - int(counts.sum())
    order = np.lexsort((np.arange(len(w)), -(quota - counts)))
    counts[order[:rest]] += 1
    return counts


class Mixture:
    """Interleaves datasets with fixed proportions: global position -> (dataset, its position).

    Positions come in blocks of `block`; each block holds `block_counts` samples of each dataset
    in a seeded random arrangement, and dataset d's k-th sample in block b is its position
    `b * counts[d] + k`. Each dataset keeps its own epochs and shard-aware order.
    """

    def __init__(self, weights: list[float], seed: int, block: int = 1024):
        self.counts = block_counts(weights, block)
        self.block, self.seed = block, seed

    @lru_cache(maxsize=4)  # noqa: B019
    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        which = np.repeat(np.arange(len(self.counts)), self.counts)
        which = which[_rng(self.seed, 2, b).permutation(self.block)]
        rank_in = np.empty(self.block, np.int64)
        for d in range(len(self.counts)):
            mask = which == d
            rank_in[mask] = np.arange(int(mask.sum()))
        return which, rank_in

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions = np.asarray(positions, np.int64)
        blocks, offs = positions // self.block, positions % self.block
        datasets = np.empty(len(positions), np.int64)
        inner = np.empty(len(positions), np.int64)
        for b in np.unique(blocks):
            mask = blocks == b
            which, rank_in = self._block(int(b))
            datasets[mask] = which[offs[mask]]
            inner[mask] = b * self.counts[which[offs[mask]]] + rank_in[offs[mask]]
        return datasets, inner
