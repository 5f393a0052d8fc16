"""Rows of a latent set (`data build latents`): the VAE posterior (mean, logvar) of each image ->
one draw mean + std * noise, scaled by the VAE's scaling factor, as the DiT input `image`.

The noise comes from a generator keyed by (data.seed, epoch, sample id), like every image
augmentation (`augment.py`), so a resumed or resharded run draws the same latents bitwise, and
each epoch draws a fresh one (DiT samples the posterior at every step; fast-DiT freezes one draw
per image). data.random_flip flips the latent's columns: the flip of the latent, not the latent
of the flipped image (exact only for a flip-equivariant VAE; close for SD's); the build stores no
flipped copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline.augment import TAG_FLIP, TAG_LATENT, augment_keys_set, sample_rng
from data_pipeline.config import DataConfig
from data_pipeline.decode import decode_field
from data_pipeline.errors import BadSampleError, where
from data_pipeline.transforms import LABEL_KEYS, LabelledArrays, pick

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps logvar so


def _field(raw: dict, name: str) -> str | None:
    return pick(raw, "", (name, f"{name}.npy"))


class LatentRows(LabelledArrays):
    """Decodes latent samples (`mean`, `logvar`, label) into scaled posterior draws."""

    kind = "latents"

    def __init__(self, cfg: DataConfig, meta: dict, train: bool):
        ignored = augment_keys_set(cfg) + [
            f"data.{k}" for k in ("image_size", "image_mode") if getattr(cfg, k)]
        if ignored:
            raise ValueError(f"{ignored[0]} applies to images; a latent set (kind: latents)"
                             " would ignore it")
        self.cfg, self.train = cfg, train
        self.shape = tuple(int(x) for x in meta["latent_shape"])
        self.scale = np.float32(meta.get("scaling_factor", 0.18215))
        self.shift = np.float32(meta.get("shift_factor", 0.0))

    def __call__(self, raw: dict[str, tuple[str, bytes]], shard: str, key: str, sample_id: int,
                 epoch: int) -> dict[str, Any]:
        mean_key, logvar_key = _field(raw, "mean"), _field(raw, "logvar")
        lbl_key = pick(raw, self.cfg.label_key, LABEL_KEYS)
        if mean_key is None or logvar_key is None or lbl_key is None:
            raise BadSampleError(f"{where(shard, key)}: no mean/logvar/label field among"
                                 f" {sorted(raw)}")
        try:
            mean = np.asarray(decode_field(*raw[mean_key]), np.float32)
            logvar = np.asarray(decode_field(*raw[logvar_key]), np.float32)
            label = int(decode_field(*raw[lbl_key]))
        except Exception as e:
            raise BadSampleError(
                f"{where(shard, key)}: cannot decode: {type(e).__name__}: {e}") from e
        if mean.shape != self.shape or logvar.shape != self.shape:
            raise BadSampleError(f"{where(shard, key)}: latent shapes {mean.shape} /"
                                 f" {logvar.shape}, the manifest says {self.shape}")
        return {"image": self.draw(mean, logvar, sample_id, epoch), "label": label}

    def draw(self, mean: np.ndarray, logvar: np.ndarray, sample_id: int,
             epoch: int) -> np.ndarray:
        """(mean + std * noise - shift) * scale, noise keyed by the sample (the mean when
        data.latent_sample is off), flipped (train) when data.random_flip draws it."""
        cfg = self.cfg
        x = mean
        if cfg.latent_sample:
            std = np.exp(np.float32(0.5) * np.clip(logvar, *LOGVAR_RANGE))
            rng = sample_rng(cfg.seed, epoch, sample_id, TAG_LATENT)
            x = mean + std * rng.standard_normal(mean.shape, np.float32)
        x = (x - self.shift) * self.scale
        if self.train and cfg.random_flip:
            if sample_rng(cfg.seed, epoch, sample_id, TAG_FLIP).random() < 0.5:
                x = x[..., ::-1]
        return np.ascontiguousarray(x, np.float32)
