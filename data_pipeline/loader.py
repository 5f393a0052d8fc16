"""The resumable, elastic loaders for sharded datasets (see `data_pipeline/__init__.py`).

Micro-batch k of the train stream covers global positions [start + k*M, start + (k+1)*M), where
M = global_batch / grad_accum; rank r takes its contiguous slice (`order.rank_slice`). DataLoader
worker w builds micro-batches k = w, w+W, ...; the DataLoader hands them out round-robin, so the
stream a rank sees does not depend on the worker count. The state is `consumed` (positions used by
all ranks), counted in the main process as batches are handed to the trainer, so read-ahead in
the workers never leaks into a checkpoint.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.config import DataConfig
from data_pipeline.decode import IMAGE_EXTS, decode_field
from data_pipeline.errors import ChecksumError, DataError, ShardNotFoundError
from data_pipeline.memory import budget_samples
from data_pipeline.order import Mixture, rank_slice
from data_pipeline.source import ShardedSource
from data_pipeline.transforms import IMAGE_KEYS, TOKEN_KEYS, ImageRows, TokenRows, detect_kind, pick

log = logging.getLogger(__name__)
STATE_VERSION = 1
BAD_SAMPLE_POLICIES = ("error", "skip")


class Resolver:
    """Stream positions -> (source, canonical id, global id, epoch of that source)."""

    def __init__(self, sources: list[ShardedSource], mixture: Mixture | None, shuffled: bool):
        self.sources, self.mixture, self.shuffled = sources, mixture, shuffled
        sizes = [s.num_samples for s in sources]
        self.bases = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.mixture is None:
            which, inner = np.zeros(len(positions), np.int64), positions
        else:
            which, inner = self.mixture.locate(positions)
        ids = np.empty(len(positions), np.int64)
        epochs = np.empty(len(positions), np.int64)
        for d in np.unique(which):
            mask, src = which == d, self.sources[int(d)]
            ids[mask] = src.order.ids(inner[mask]) if self.shuffled else inner[mask] % src.num_samples
            epochs[mask] = inner[mask] // src.num_samples
        return which, ids, ids + self.bases[which], epochs


class TrainPlan:
    """Positions of this rank's micro-batch k of the train stream (endless unless budgeted)."""

    def __init__(self, start: int, micro_global: int, rank: int, world_size: int, stop: int):
        self.start, self.micro_global, self.rank, self.world = start, micro_global, rank, world_size
        self.num_batches = None if stop <= 0 else max(0, (stop - start) // micro_global)

    def positions(self, k: int) -> np.ndarray:
        r = rank_slice(self.start + k * self.micro_global, self.micro_global, self.rank, self.world)
        return np.arange(r.start, r.stop, dtype=np.int64)


class EvalPlan:
    """One pass over N samples in canonical order; positions >= N are padding (-1)."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int):
        self.n, self.global_batch, self.rank, self.world = num_samples, global_batch, rank, world_size
        self.num_batches = math.ceil(num_samples / global_batch)

    def positions(self, k: int) -> np.ndarray:
        r = rank_slice(k * self.global_batch, self.global_batch, self.rank, self.world)
        pos = np.arange(r.start, r.stop, dtype=np.int64)
        return np.where(pos < self.n, pos, -1)


class WorkerError:
    """An exception raised while building a batch, carried to the main process."""

    def __init__(self, exc: Exception, trace: str):
        self.exc, self.trace = exc, trace


def _unwrap(batch: dict | WorkerError) -> dict[str, torch.Tensor]:
    if isinstance(batch, WorkerError):
        if hasattr(batch.exc, "add_note"):
            batch.exc.add_note(f"raised in a data loader worker:\n{batch.trace}")
        raise batch.exc
    return batch


class BatchStream(IterableDataset):
    """Builds micro-batches in DataLoader workers: read, decode, transform, collate."""

    def __init__(self, plan: TrainPlan | EvalPlan, resolver: Resolver, rows: ImageRows | TokenRows,
                 skip_bad: bool):
        self.plan, self.resolver, self.rows, self.skip_bad = plan, resolver, rows, skip_bad

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        k = worker
        while self.plan.num_batches is None or k < self.plan.num_batches:
            try:
                batch = self.batch(k, prefetch_next=k + workers)
            except Exception as e:
                # Handed over as a value: a worker that raises makes DataLoader shutdown wait ~5 s
                # per worker; the main process re-raises it (`_unwrap`).
                yield WorkerError(e, traceback.format_exc())
                return
            yield batch
            k += workers

    def batch(self, k: int, prefetch_next: int | None = None) -> dict[str, torch.Tensor]:
        pos = self.plan.positions(k)
        valid = np.flatnonzero(pos >= 0)
        which, ids, gids, epochs = self.resolver(pos[valid])
        if prefetch_next is not None and (self.plan.num_batches is None
                                          or prefetch_next < self.plan.num_batches):
            self._prefetch(prefetch_next)
        rows: list[dict[str, Any]] = [self.rows.pad()] * len(pos)
        sample_ids = np.full(len(pos), -1, np.int64)
        shards, index = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
        for d in np.unique(which):
            mask = which == d
            shards[mask], index[mask] = self.resolver.sources[int(d)].order.locate(ids[mask])
        for j in np.lexsort((index, shards, which)).tolist():  # mostly sequential reads
            src = self.resolver.sources[int(which[j])]
            try:
                shard, key, raw = src.read_at(int(shards[j]), int(index[j]))
                rows[valid[j]] = self.rows(raw, shard, key, int(gids[j]), int(epochs[j]))
            except (ShardNotFoundError, ChecksumError):
                raise  # whole-dataset problems are never skipped
            except DataError as e:
                if not self.skip_bad:
                    raise
                log.warning("skipping bad sample (data.on_bad_sample=skip): %s", e)
                continue
            sample_ids[valid[j]] = gids[j]
        batch = {k: torch.from_numpy(v) for k, v in self.rows.collate(rows).items()}
        batch["sample_id"] = torch.from_numpy(sample_ids)
        return batch

    def _prefetch(self, k: int) -> None:
        pos = self.plan.positions(k)
        which, ids, _, _ = self.resolver(pos[pos >= 0])
        for d in np.unique(which):
            self.resolver.sources[int(d)].prefetch(ids[which == d])


def make_rows(cfg: DataConfig, source: ShardedSource, train: bool) -> Any:
    """The row builder for a dataset, sized from its manifest or its first sample."""
    meta = source.manifest.meta
    shard, key, raw = source.read(0)
    kind = meta.get("kind") or detect_kind(list(raw), cfg)
    if kind == "tokens":
        seq_len = meta.get("seq_len")
        if not seq_len:
            tok = pick(raw, cfg.tokens_key, TOKEN_KEYS)
            seq_len = int(np.asarray(decode_field(*raw[tok])).size) - 1
        return TokenRows(cfg, int(seq_len))
    probe = ImageRows(cfg, 1, 1, 1, train=False)
    if cfg.patch_pack:
        from data_pipeline.navit import PatchPackRows

        img_key = pick(raw, cfg.image_key, IMAGE_KEYS)
        if img_key is None:
            raise DataError(f"{shard}: sample {key!r} has no image field among {sorted(raw)}")
        image = decode_field(*raw[img_key])
        if cfg.image_mode:
            image = image.convert(cfg.image_mode)
        return PatchPackRows(cfg, len(image.getbands()))
    img_key = pick(raw, cfg.image_key, IMAGE_KEYS) or next(
        (f for f in raw if f.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
    if img_key is None:
        raise DataError(f"{shard}: sample {key!r} has no image field among {sorted(raw)}")
    c, h, w = probe._pixels(decode_field(*raw[img_key]), 0, 0).shape
    return ImageRows(cfg, c, h, w, train)


def _dataloader(stream: BatchStream, cfg: DataConfig) -> DataLoader:
    kwargs: dict[str, Any] = {}
    if cfg.num_workers > 0:
        kwargs["prefetch_factor"] = cfg.prefetch_factor
    pin = cfg.pin_memory and torch.cuda.is_available()
    return DataLoader(stream, batch_size=None, num_workers=cfg.num_workers, pin_memory=pin, **kwargs)


def _check_policy(cfg: DataConfig) -> bool:
    if cfg.on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"data.on_bad_sample={cfg.on_bad_sample!r}: choose one of {BAD_SAMPLE_POLICIES}")
    return cfg.on_bad_sample == "skip"


class ShardedTrainLoader:
    """Endless (or budgeted) stream of this rank's micro-batches; resumable at any world size."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, grad_accum: int = 1):
        if cfg.global_batch_size % (world_size * grad_accum):
            raise ValueError(
                f"data.global_batch_size={cfg.global_batch_size} is not divisible by "
                f"world_size*grad_accum={world_size}*{grad_accum}"
            )
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.skip_bad = _check_policy(cfg)
        self.micro_global = cfg.global_batch_size // grad_accum
        entries = sorted(cfg.mixture.items()) if cfg.mixture else [(cfg.train_url, 1.0)]
        self.urls = [url for url, _ in entries]
        self.weights = [float(w) for _, w in entries]
        self.sources = [ShardedSource(url, cfg.format, cfg, shuffle=cfg.shuffle) for url in self.urls]
        mixture = Mixture(self.weights, cfg.seed, cfg.mixture_block) if len(entries) > 1 else None
        self.resolver = Resolver(self.sources, mixture, shuffled=cfg.shuffle)
        self.rows = make_rows(cfg, self.sources[0], train=True)
        self.stop = self._budget()
        self.consumed = 0
        self.bad_samples = 0
        self._iterator: Iterator | None = None

    def _budget(self) -> int:
        """Samples to stream in all (whole optimizer steps), or 0 for endless."""
        seq_len = self.rows.seq_len if isinstance(self.rows, TokenRows) else 0
        return budget_samples(self.cfg, seq_len)

    @property
    def meta(self) -> dict:
        """The dataset's manifest metadata (kind, num_classes, image_shape, seq_len, vocab_size...)
        for sizing the model; from the first dataset of a mixture."""
        return dict(self.sources[0].manifest.meta)

    @property
    def samples_per_epoch(self) -> int:
        return sum(s.num_samples for s in self.sources)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        plan = TrainPlan(self.consumed, self.micro_global, self.rank, self.world_size, self.stop)
        stream = BatchStream(plan, self.resolver, self.rows, self.skip_bad)
        for batch in map(_unwrap, _dataloader(stream, self.cfg)):
            self.consumed += self.micro_global
            self.bad_samples += int((batch["sample_id"] < 0).sum())
            yield batch

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iterator is None:
            self._iterator = iter(self)
        return next(self._iterator)

    def metrics(self) -> dict[str, float]:
        """Counters for the trainer's logs."""
        return {"data/bad_samples": float(self.bad_samples),
                "data/epoch": self.consumed / self.samples_per_epoch}

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "consumed": self.consumed,
            "seed": self.cfg.seed,
            "num_samples": [s.num_samples for s in self.sources],
            "weights": self.weights,
            "bad_samples": self.bad_samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position (any world size; consumed is counted over all ranks)."""
        mine = self.state_dict()
        for key in ("seed", "num_samples", "weights"):
            if state.get(key) != mine[key]:
                raise ValueError(f"loader state has {key}={state.get(key)!r} but this dataset has"
                                 f" {mine[key]!r}: resuming would not continue the same order")
        self.consumed = int(state["consumed"])
        self.bad_samples = int(state.get("bad_samples", 0))
        self._iterator = None


class ShardedEvalLoader:
    """One pass over the validation shards, padded so that every rank yields as many batches."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int):
        self.cfg = cfg
        self.skip_bad = _check_policy(cfg)
        self.source = ShardedSource(cfg.val_url, cfg.format, cfg, shuffle=False)
        self.resolver = Resolver([self.source], None, shuffled=False)
        self.rows = make_rows(cfg, self.source, train=False)
        global_batch = cfg.eval_batch_size or cfg.global_batch_size
        if global_batch % world_size:
            raise ValueError(f"eval batch {global_batch} does not split across {world_size} ranks")
        self.plan = EvalPlan(self.source.num_samples, global_batch, rank, world_size)
        self.bad_samples = 0

    def __len__(self) -> int:
        return self.plan.num_batches

    @property
    def meta(self) -> dict:
        return dict(self.source.manifest.meta)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream = BatchStream(self.plan, self.resolver, self.rows, self.skip_bad)
        for k, batch in enumerate(map(_unwrap, _dataloader(stream, self.cfg))):
            padding = int((self.plan.positions(k) < 0).sum())
            self.bad_samples += int((batch["sample_id"] < 0).sum()) - padding
            yield batch
