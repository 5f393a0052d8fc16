"""NaViT-style "Patch n' Pack": images of different resolutions as patch sequences, several
images packed into one fixed-length sequence, with per-image ids for attention masking.

To keep the loader's arithmetic in samples (and so exact resume and elastic resume), every packed
sequence holds exactly `pack_images` consecutive images of the global order. Images keep their
aspect ratio; sides are rounded to multiples of the patch size, and if the images of a sequence
have more patches than `pack_max_patches`, all of them are scaled down together until they fit.

Batch of a rank whose micro-batch has B images, R = B / pack_images sequences of S patches:
  patches   float32 [R, S, C*p*p]   normalised pixels, patch-major (c, y, x inside a patch)
  patch_pos int64   [R, S, 2]       (row, col) of each patch in its image's grid; 0 on padding
  image_ids int64   [R, S]          slot 0..pack_images-1 of the patch's image; -1 on padding
  label     int64   [B]             per image slot (row-major); IGNORE_INDEX for padding/skipped
  sample_id int64   [B]             per image slot; -1 for padding/skipped
Attention inside a sequence: allow (i, j) iff image_ids[i] == image_ids[j] != -1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.decode import decode_field
from data_pipeline.errors import BadSampleError, where
from data_pipeline.transforms import image_and_label_fields


def patch_grid(height: int, width: int, patch: int, scale: float = 1.0) -> tuple[int, int]:
    """Patches (rows, cols) of an image resized by `scale`, at least one patch per side."""
    return max(1, int(height * scale) // patch), max(1, int(width * scale) // patch)


def fit_scale(sizes: list[tuple[int, int]], patch: int, max_patches: int) -> float:
    """The largest common scale (<= 1) at which these images need at most max_patches patches."""
    if len(sizes) > max_patches:
        raise ValueError(f"data.pack_max_patches={max_patches} cannot hold {len(sizes)} images")
    scale = 1.0
    for _ in range(64):
        total = sum(r * c for r, c in (patch_grid(h, w, patch, scale) for h, w in sizes))
        if total <= max_patches:
            return scale
        scale *= min(0.98, math.sqrt(max_patches / total))
    return scale


class PatchPackRows:
    """Row builder (one image per row) whose collate packs `pack_images` rows per sequence."""

    kind = "images"

    def __init__(self, cfg: DataConfig, channels: int):
        if cfg.patch_size <= 0 or cfg.pack_images <= 0 or cfg.pack_max_patches <= 0:
            raise ValueError("data.patch_size, pack_images and pack_max_patches must be positive")
        self.cfg, self.channels = cfg, channels
        self.p, self.k, self.s = cfg.patch_size, cfg.pack_images, cfg.pack_max_patches
        mean = np.asarray(cfg.image_mean, np.float32)
        std = np.asarray(cfg.image_std, np.float32)
        self.scale = np.broadcast_to(1.0 / (255.0 * std), (channels,)).astype(np.float32)
        self.shift = np.broadcast_to(mean / std, (channels,)).astype(np.float32)

    def __call__(self, raw: dict[str, tuple[str, bytes]], shard: str, key: str, sample_id: int,
                 epoch: int) -> dict[str, Any]:
        img_key, lbl_key = image_and_label_fields(raw, self.cfg, shard, key)
        try:
            image = decode_field(*raw[img_key])
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            if self.cfg.image_mode and image.mode != self.cfg.image_mode:
                image = image.convert(self.cfg.image_mode)
            label = int(decode_field(*raw[lbl_key]))
        except Exception as e:
            raise BadSampleError(
                f"{where(shard, key)}: cannot decode: {type(e).__name__}: {e}"
            ) from e
        if len(image.getbands()) != self.channels:
            raise BadSampleError(
                f"{where(shard, key)}: {len(image.getbands())} channels, expected"
                f" {self.channels} (set data.image_mode)"
            )
        return {"image": image, "label": label}

    def pad(self) -> dict[str, Any]:
        return {"image": None, "label": IGNORE_INDEX}

    def _patches(self, image: Image.Image, rows: int, cols: int) -> np.ndarray:
        p = self.p
        if image.size != (cols * p, rows * p):
            image = image.resize((cols * p, rows * p), Image.BILINEAR)
        arr = np.asarray(image, np.uint8).reshape(rows * p, cols * p, self.channels)
        arr = arr.astype(np.float32) * self.scale - self.shift
        # (rows, p, cols, p, c) -> (rows, cols, c, p, p) -> (rows*cols, c*p*p)
        arr = arr.reshape(rows, p, cols, p, self.channels).transpose(0, 2, 4, 1, 3)
        return arr.reshape(rows * cols, self.channels * p * p)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        if len(rows) % self.k:
            raise ValueError(
                f"micro-batch of {len(rows)} images does not split into sequences of"
                f" data.pack_images={self.k}"
            )
        n_seq, dim = len(rows) // self.k, self.channels * self.p * self.p
        patches = np.zeros((n_seq, self.s, dim), np.float32)
        pos = np.zeros((n_seq, self.s, 2), np.int64)
        ids = np.full((n_seq, self.s), -1, np.int64)
        for q in range(n_seq):
            group = rows[q * self.k : (q + 1) * self.k]
            sizes = [(r["image"].height, r["image"].width) for r in group if r["image"] is not None]
            scale = fit_scale(sizes, self.p, self.s) if sizes else 1.0
            at = 0
            for slot, row in enumerate(group):
                if row["image"] is None:
                    continue
                gr, gc = patch_grid(row["image"].height, row["image"].width, self.p, scale)
                n = gr * gc
                patches[q, at : at + n] = self._patches(row["image"], gr, gc)
                pos[q, at : at + n, 0] = np.repeat(np.arange(gr), gc)
                pos[q, at : at + n, 1] = np.tile(np.arange(gc), gr)
                ids[q, at : at + n] = slot
                at += n
        return {
            "patches": patches,
            "patch_pos": pos,
            "image_ids": ids,
            "label": np.asarray([r["label"] for r in rows], np.int64),
        }


def attention_mask(image_ids: np.ndarray) -> np.ndarray:
    """[R, S, S] boolean: patches attend only within their own image (padding attends nowhere)."""
    same = image_ids[:, :, None] == image_ids[:, None, :]
    return same & (image_ids[:, :, None] >= 0)
