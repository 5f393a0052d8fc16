"""In-memory datasets as a batch source for the shared loaders (see `contract.py`).

Used by the default demo (the scikit-learn handwritten digits, bundled with the package, so no
download) and by tests (synthetic images and tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.order import held_out, permuted_ids

__all__ = ["IGNORE_INDEX", "MemorySource", "load_arrays", "memory_source"]


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
    is_val = held_out(len(next(iter(arrays.values()))), cfg.val_fraction)
    idx = np.flatnonzero(is_val == (split == "val"))
    return {k: v[idx] for k, v in arrays.items()}


class MemorySource:
    """In-memory arrays as a `contract.BatchSource`. Train positions go through one flat
    permutation per epoch (`order.permuted_ids`); eval positions are row indices."""

    def __init__(self, arrays: dict[str, np.ndarray], seed: int, shuffle: bool,
                 tokens_per_sample: int):
        self.arrays, self.seed, self.shuffle = arrays, seed, shuffle
        self.num_samples = len(next(iter(arrays.values())))
        self.tokens_per_sample = tokens_per_sample

    def identity(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "seed": self.seed}

    def mismatch_hint(self) -> str:
        return ""

    def to_batch(self, idx: np.ndarray, ids: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows `idx` as a batch whose "sample_id" is `ids` (token rows of seq_len + 1 ids
        become inputs and shifted targets)."""
        batch = {k: torch.from_numpy(v[idx]) for k, v in self.arrays.items()}
        if "tokens" in batch:
            seq = batch.pop("tokens")
            batch["tokens"], batch["targets"] = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        batch["sample_id"] = torch.from_numpy(ids.astype(np.int64))
        return batch

    def batch(self, positions: np.ndarray, upcoming: np.ndarray | None = None
              ) -> dict[str, torch.Tensor]:
        valid = positions >= 0
        idx = np.zeros(len(positions), np.int64)
        real = positions[valid]
        idx[valid] = permuted_ids(real, self.num_samples, self.seed) if self.shuffle else real
        batch = self.to_batch(idx, np.where(valid, idx, -1))
        if not valid.all():  # padding rows of the last eval batch
            target_key = "label" if "label" in batch else "targets"
            batch[target_key][torch.from_numpy(~valid)] = IGNORE_INDEX
        return batch


def memory_source(cfg: DataConfig, split: str) -> MemorySource:
    arrays = load_arrays(cfg, split)
    tokens = cfg.seq_len if "tokens" in arrays else 0
    return MemorySource(arrays, cfg.seed, shuffle=split == "train", tokens_per_sample=tokens)
