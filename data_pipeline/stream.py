"""The one loader implementation behind every source (the contract is in `contract.py`).

Micro-batch k of the train stream covers global positions [start + k*M, start + (k+1)*M), where
M = global_batch / grad_accum; rank r takes its contiguous slice (`order.TrainPlan`). DataLoader
worker w builds micro-batches k = w, w+W, ...; the DataLoader hands them out round-robin, so the
stream a rank sees does not depend on the worker count. The state is `consumed` (positions used by
all ranks), counted in the main process as batches are handed to the trainer, so read-ahead in
the workers never leaks into a checkpoint.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.config import DataConfig
from data_pipeline.contract import Batch, BatchSource
from data_pipeline.order import EvalPlan, TrainPlan

STATE_VERSION = 1


def budget_samples(cfg: DataConfig, tokens_per_sample: int) -> int:
    """data.budget_samples / budget_tokens as samples in whole optimizer steps; 0 = endless."""
    samples = cfg.budget_samples
    if cfg.budget_tokens:
        if not tokens_per_sample:
            raise ValueError("data.budget_tokens needs a token dataset (use budget_samples)")
        by_tokens = cfg.budget_tokens // tokens_per_sample
        samples = min(samples, by_tokens) if samples else by_tokens
    if samples <= 0:
        return 0
    steps = samples // cfg.global_batch_size
    if steps == 0:
        raise ValueError(f"data budget of {samples} samples is less than one global batch")
    return steps * cfg.global_batch_size


class WorkerError:
    """An exception raised while building a batch, carried to the main process."""

    def __init__(self, exc: Exception, trace: str):
        self.exc, self.trace = exc, trace


def unwrap(batch: Batch | WorkerError) -> Batch:
    if isinstance(batch, WorkerError):
        if hasattr(batch.exc, "add_note"):
            batch.exc.add_note(f"raised in a data loader worker:\n{batch.trace}")
        raise batch.exc
    return batch


class BatchStream(IterableDataset):
    """Builds a plan's micro-batches from a source, split across DataLoader workers."""

    def __init__(self, plan: TrainPlan | EvalPlan, source: BatchSource):
        self.plan, self.source = plan, source

    def __iter__(self) -> Iterator[Batch | WorkerError]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)
        k, last = worker, self.plan.num_batches
        while last is None or k < last:
            try:
                nxt = k + workers
                upcoming = self.plan.positions(nxt) if last is None or nxt < last else None
                batch = self.source.batch(self.plan.positions(k), upcoming)
            except Exception as e:
                # Handed over as a value: a worker that raises makes DataLoader shutdown wait ~5 s
                # per worker; the main process re-raises it (`unwrap`).
                yield WorkerError(e, traceback.format_exc())
                return
            yield batch
            k += workers


def worker_stream(dataset: IterableDataset, cfg: DataConfig, num_workers: int,
                  collate: Any = None, context: str | None = None) -> Iterator[Any]:
    """The items of `dataset` through DataLoader workers: the one place a loader builds one.
    Items are handed over as built (batch_size None; `collate`, if given, replaces the
    numpy-to-tensor conversion); a `WorkerError` item is re-raised in this process."""
    return map(unwrap, worker_loader(dataset, cfg, num_workers, collate, context))


def worker_loader(dataset: IterableDataset, cfg: DataConfig, num_workers: int,
                  collate: Any = None, context: str | None = None,
                  persistent: bool = False) -> DataLoader:
    """The DataLoader behind `worker_stream`; `persistent` keeps its workers between passes
    (each pass restarts `dataset`'s iteration in them, batches from an unfinished pass are
    dropped by DataLoader), so a repeated pass does not pay for starting processes again."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = cfg.prefetch_factor
        kwargs["multiprocessing_context"] = context
        kwargs["persistent_workers"] = persistent
    if collate is not None:
        kwargs["collate_fn"] = collate
    # Every new DataLoader iterator draws a base seed; from the global RNG unless it has its own
    # generator. The draw would shift the training RNG (DiT noise, dropout) by one per iterator,
    # so a resumed run, which starts its iterator after the RNG is restored, would diverge. The
    # batches themselves do not depend on the seed (every draw is a function of sample ids).
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers,
                      pin_memory=pin_batches(cfg) and collate is None, generator=generator,
                      **kwargs)


def pin_batches(cfg: DataConfig) -> bool:
    """data.pin_memory (auto/true) on a machine with CUDA: page-locked batches."""
    return bool(cfg.pin_memory) and torch.cuda.is_available()


def _batches(plan: TrainPlan | EvalPlan, source: BatchSource, cfg: DataConfig,
             num_workers: int) -> Iterator[Batch]:
    return map(finisher(source), worker_stream(BatchStream(plan, source), cfg, num_workers))


def finisher(source: BatchSource) -> Any:
    """The source's last step in the trainer's process (the device decode), if it has one."""
    return getattr(source, "finish", None) or (lambda batch: batch)


def _bad_rows(batch: Batch) -> int:
    return int((batch["sample_id"] < 0).sum())


class SourceTrainLoader:
    """Endless (or budgeted) stream of this rank's micro-batches; resumable at any world size.
    Implements `contract.TrainLoader` for any `BatchSource`."""

    def __init__(self, source: BatchSource, cfg: DataConfig, rank: int, world_size: int,
                 grad_accum: int = 1, num_workers: int | None = None):
        if cfg.global_batch_size % (world_size * grad_accum):
            raise ValueError(
                f"data.global_batch_size={cfg.global_batch_size} is not divisible by "
                f"world_size*grad_accum={world_size}*{grad_accum}"
            )
        self.source, self.cfg, self.rank, self.world_size = source, cfg, rank, world_size
        self.num_workers = cfg.loader_workers if num_workers is None else num_workers
        self.micro_global = cfg.global_batch_size // grad_accum
        self.stop = budget_samples(cfg, source.tokens_per_sample)
        self.consumed = 0
        self.bad_samples = 0

    @property
    def samples_per_epoch(self) -> int:
        return self.source.num_samples

    def __iter__(self) -> Iterator[Batch]:
        plan = TrainPlan(self.consumed, self.micro_global, self.rank, self.world_size, self.stop)
        for batch in _batches(plan, self.source, self.cfg, self.num_workers):
            self.consumed += self.micro_global
            self.bad_samples += _bad_rows(batch)
            yield batch

    def metrics(self) -> dict[str, float]:
        return {"data/bad_samples": float(self.bad_samples),
                "data/epoch": self.consumed / self.samples_per_epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "consumed": self.consumed, **self.source.identity(),
                "bad_samples": self.bad_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (any world size; consumed is counted over all ranks).
        A key the saved state lacks (written before that key existed) is not compared."""
        for key, mine in self.source.identity().items():
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]!r} but this dataset has"
                                 f" {mine!r}: resuming would not continue the same order"
                                 f"{self.source.mismatch_hint()}")
        self.consumed = int(state["consumed"])
        self.bad_samples = int(state.get("bad_samples", 0))


class SourceEvalLoader:
    """One pass over a source in canonical order, padded so that every rank yields as many
    batches (collectives inside the model stay matched). Implements `contract.EvalLoader`."""

    def __init__(self, source: BatchSource, cfg: DataConfig, rank: int, world_size: int,
                 num_workers: int | None = None):
        global_batch = cfg.eval_batch_size or cfg.global_batch_size
        if global_batch % world_size:
            raise ValueError(f"eval batch {global_batch} does not split across {world_size} ranks")
        self.source, self.cfg = source, cfg
        self.num_workers = cfg.loader_workers if num_workers is None else num_workers
        self.plan = EvalPlan(source.num_samples, global_batch, rank, world_size)
        self.bad_samples = 0
        self._loader: DataLoader | None = None  # built at the first pass, its workers kept

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    def __len__(self) -> int:
        return self.plan.num_batches

    def __iter__(self) -> Iterator[Batch]:
        """One pass; every evaluation makes one, through the same workers (the validation set
        and its order do not change between evaluations)."""
        if self._loader is None:
            self._loader = worker_loader(BatchStream(self.plan, self.source), self.cfg,
                                         self.num_workers, persistent=True)
        for k, batch in enumerate(map(finisher(self.source), map(unwrap, self._loader))):
            padding = int((self.plan.positions(k) < 0).sum())
            self.bad_samples += _bad_rows(batch) - padding
            yield batch

