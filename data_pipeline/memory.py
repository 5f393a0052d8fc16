"""In-memory datasets behind the resumable-loader contract (see `data_pipeline/__init__.py`).

Used by the default demo (the scikit-learn handwritten digits, bundled with the package, so no
download) and by tests (synthetic images and tokens).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.order import epoch_permutation, rank_slice

__all__ = ["IGNORE_INDEX", "MemoryEvalLoader", "MemoryTrainLoader", "load_arrays"]


def load_arrays(cfg: DataConfig, split: str) -> dict[str, np.ndarray]:
    """Arrays for one split of an in-memory dataset, keyed like the batches."""
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5
        arrays = {"image": images[:, None, :, :], "label": digits.target.astype(np.int64)}
    elif cfg.name == "synthetic_images":
        rng = np.random.Generator(np.random.PCG64(1234))
        labels = rng.integers(0, 10, size=512)
        protos = rng.standard_normal((10, 1, 8, 8)).astype(np.float32)
        noise = 0.5 * rng.standard_normal((512, 1, 8, 8)).astype(np.float32)
        arrays = {"image": protos[labels] + noise, "label": labels.astype(np.int64)}
    elif cfg.name == "synthetic_tokens":
        rng = np.random.Generator(np.random.PCG64(1234))
        tokens = rng.integers(0, 256, size=(512, cfg.seq_len + 1))
        arrays = {"tokens": tokens.astype(np.int64)}
    else:
        raise ValueError(
            f"data.name={cfg.name!r} is not an in-memory dataset "
            "(choose digits, synthetic_images or synthetic_tokens)"
        )
    n = len(next(iter(arrays.values())))
    order = epoch_permutation(n, seed=0, epoch=0)  # fixed split, independent of data.seed
    n_val = int(round(n * cfg.val_fraction))
    idx = np.sort(order[:n_val] if split == "val" else order[n_val:])
    return {k: v[idx] for k, v in arrays.items()}


def _to_batch(arrays: dict[str, np.ndarray], idx: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
    batch = {k: torch.from_numpy(v[idx]) for k, v in arrays.items()}
    if "tokens" in batch:
        seq = batch.pop("tokens")
        batch["tokens"], batch["targets"] = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    batch["sample_id"] = torch.from_numpy(ids.astype(np.int64))
    return batch


def budget_samples(cfg: DataConfig, tokens_per_sample: int) -> int:
    """data.budget_samples / budget_tokens as a sample count in whole optimizer steps; 0 = endless."""
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


class MemoryTrainLoader:
    """Endless stream of this rank's micro-batches, in the global order; resumable and elastic."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, grad_accum: int = 1):
        self.arrays = load_arrays(cfg, "train")
        self.num_samples = len(next(iter(self.arrays.values())))
        if cfg.global_batch_size % (world_size * grad_accum):
            raise ValueError(
                f"data.global_batch_size={cfg.global_batch_size} is not divisible by "
                f"world_size*grad_accum={world_size}*{grad_accum}"
            )
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.micro_global = cfg.global_batch_size // grad_accum
        self.consumed = 0  # global stream position, counted over all ranks
        self.stop = budget_samples(cfg, cfg.seq_len if "tokens" in self.arrays else 0)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while not self.stop or self.consumed + self.micro_global <= self.stop:
            positions = np.asarray(rank_slice(self.consumed, self.micro_global, self.rank, self.world_size))
            epochs, offsets = positions // self.num_samples, positions % self.num_samples
            idx = np.array([
                epoch_permutation(self.num_samples, self.cfg.seed, int(e))[o]
                for e, o in zip(epochs, offsets)
            ])
            self.consumed += self.micro_global
            yield _to_batch(self.arrays, idx, idx)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "num_samples": self.num_samples, "seed": self.cfg.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("num_samples") != self.num_samples:
            raise ValueError(
                f"loader state is for {state.get('num_samples')} samples, dataset has {self.num_samples}"
            )
        self.consumed = int(state["consumed"])


class MemoryEvalLoader:
    """One pass over the validation split; every rank yields the same number of batches
    (padding rows carry IGNORE_INDEX targets) so collectives inside the model stay matched."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int):
        self.arrays = self._load(cfg)
        self.num_samples = len(next(iter(self.arrays.values())))
        self.global_batch = cfg.eval_batch_size or cfg.global_batch_size
        self.rank, self.world_size = rank, world_size

    def _load(self, cfg: DataConfig) -> dict[str, np.ndarray]:
        return load_arrays(cfg, "val")

    _batch = staticmethod(_to_batch)  # (arrays, indices, sample ids) -> batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, self.num_samples, self.global_batch):
            pos = np.asarray(rank_slice(start, self.global_batch, self.rank, self.world_size))
            valid = pos < self.num_samples
            idx = np.where(valid, pos, 0)
            batch = self._batch(self.arrays, idx, np.where(valid, pos, -1))
            target_key = "label" if "label" in batch else "targets"
            batch[target_key][torch.from_numpy(~valid)] = IGNORE_INDEX
            yield batch
