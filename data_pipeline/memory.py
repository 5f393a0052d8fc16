"""In-memory datasets as a batch source for the shared loaders (see `contract.py`).

Used by the default demo (the scikit-learn handwritten digits, bundled with the package, so no
download), by tests (synthetic images and tokens), and by the muP studies (`digits_translated`:
the same digits placed at a random spot of a noisy 12x12 canvas, a fresh draw at every stream
position, so a small ViT does not memorise it in a few hundred steps).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.order import held_out, permuted_ids

__all__ = [
    "IGNORE_INDEX", "MemorySource", "TranslatedDigits", "load_arrays", "memory_source",
    "translate_digits",
]

MEMORY_DATASETS = ("digits", "digits_translated", "synthetic_images", "synthetic_tokens")
CANVAS, CANVAS_NOISE, VAL_PLACEMENTS = 12, 0.3, 4


def load_arrays(cfg: DataConfig, split: str) -> dict[str, np.ndarray]:
    """Arrays for one split of an in-memory dataset, keyed like the batches."""
    if cfg.name in ("digits", "digits_translated"):
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
            f"(choose {', '.join(MEMORY_DATASETS)})"
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


def translate_digits(images: np.ndarray, keys: np.ndarray, stream: tuple[int, int]
                     ) -> np.ndarray:
    """Each [C, h, w] image at a random offset of a [C, CANVAS, CANVAS] canvas of background plus
    Gaussian noise (std CANVAS_NOISE), drawn from a generator keyed by (stream, key).

    Keying every sample by its own id (a stream position when training) makes a draw independent
    of which rank or batch reads it, so the data order stays elastic and resume bitwise."""
    n, c, h, w = images.shape
    out = np.empty((n, c, CANVAS, CANVAS), np.float32)
    for i, (image, key) in enumerate(zip(images, keys)):
        rng = np.random.Generator(np.random.PCG64([*stream, int(key)]))
        top, left = rng.integers(0, CANVAS - h + 1), rng.integers(0, CANVAS - w + 1)
        canvas = np.full((c, CANVAS, CANVAS), -1.0, np.float32)  # the digits' background level
        canvas[:, top : top + h, left : left + w] = image
        out[i] = canvas + CANVAS_NOISE * rng.standard_normal(canvas.shape, np.float32)
    return out


class TranslatedDigits(MemorySource):
    """Train split of `digits_translated`: a digit's placement and noise are drawn anew at every
    stream position (keyed by data.seed and the position), so no two draws repeat."""

    def batch(self, positions: np.ndarray, upcoming: np.ndarray | None = None
              ) -> dict[str, torch.Tensor]:
        batch = super().batch(positions, upcoming)
        keys = np.maximum(np.asarray(positions, np.int64), 0)  # padding rows: any key
        placed = translate_digits(batch["image"].numpy(), keys, (self.seed, 0))
        batch["image"] = torch.from_numpy(placed)
        return batch


def translated_val(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The held-out digits, each at VAL_PLACEMENTS fixed placements (keyed by row, independent of
    data.seed): a validation set 4x larger, so its loss separates nearby learning rates."""
    images = np.repeat(arrays["image"], VAL_PLACEMENTS, axis=0)
    placed = translate_digits(images, np.arange(len(images)), (0, 1))
    return {"image": placed, "label": np.repeat(arrays["label"], VAL_PLACEMENTS)}


def memory_source(cfg: DataConfig, split: str) -> MemorySource:
    arrays = load_arrays(cfg, split)
    if cfg.name == "digits_translated":
        if split == "train":
            return TranslatedDigits(arrays, cfg.seed, shuffle=True, tokens_per_sample=0)
        arrays = translated_val(arrays)
    tokens = cfg.seq_len if "tokens" in arrays else 0
    return MemorySource(arrays, cfg.seed, shuffle=split == "train", tokens_per_sample=tokens)
