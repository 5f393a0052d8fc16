"""Mixup / CutMix with label smoothing on a collated training micro-batch -> soft targets.

Samples are mixed in pairs of neighbouring stream positions (2k, 2k+1), each pair with its own
draw (timm's "pair" mode), keyed by (seed, epoch, sample id) of the pair's first sample. timm's
"batch" mode (one lambda, partner = the batch reversed) would make the result depend on how the
global batch is split over ranks; pairs of positions stay together on any world size as long as
each rank's micro-batch is even, so a resumed or resharded run mixes the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_pipeline.augment import sample_rng
from data_pipeline.config import IGNORE_INDEX, DataConfig

TAG_MIX = 6


@dataclass(frozen=True)
class MixConfig:
    mixup_alpha: float
    cutmix_alpha: float
    prob: float
    switch_prob: float
    label_smoothing: float
    num_classes: int

    @property
    def mixes(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def mix_config(cfg: DataConfig, num_classes: int) -> MixConfig | None:
    """The soft-target settings, or None when the batch keeps hard labels only."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha or cfg.label_smoothing):
        return None
    if min(cfg.mixup_alpha, cfg.cutmix_alpha) < 0 or not 0 <= cfg.label_smoothing < 1:
        raise ValueError("data.mixup_alpha/cutmix_alpha must be >= 0 and data.label_smoothing"
                         " in [0, 1)")
    if not 0 <= cfg.mix_prob <= 1 or not 0 <= cfg.mix_switch_prob <= 1:
        raise ValueError("data.mix_prob and data.mix_switch_prob must be in [0, 1]")
    classes = cfg.num_classes or num_classes
    if classes <= 0:
        raise ValueError("soft targets (mixup/cutmix/label smoothing) need the class count: set"
                         " data.num_classes (the manifest has no num_classes)")
    return MixConfig(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob,
                     cfg.label_smoothing, int(classes))


def smoothed_one_hot(labels: np.ndarray, classes: int, smoothing: float) -> np.ndarray:
    """float32 [B, K]: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere (timm);
    rows of IGNORE_INDEX labels are all zero."""
    off = smoothing / classes
    out = np.full((len(labels), classes), off, np.float32)
    valid = labels != IGNORE_INDEX
    out[np.flatnonzero(valid), labels[valid]] = 1.0 - smoothing + off
    out[~valid] = 0.0
    return out


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator
               ) -> tuple[int, int, int, int]:
    """A box of area (1 - lam) * H * W at a uniform center, clipped to the image (timm's
    rand_bbox); the caller recomputes lambda from the clipped area."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height).tolist()
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width).tolist()
    return top, bottom, left, right


@dataclass(frozen=True)
class PairMix:
    """One pair's draw: rows a and b, blended with weight `lam` (mixup) or swapped inside
    `box` = (top, bottom, left, right) (cutmix); `lam` is each row's own-label weight."""

    a: int
    b: int
    lam: float
    box: tuple[int, int, int, int] | None = None


def draw_pair(a: int, b: int, height: int, width: int, mix: MixConfig,
              rng: np.random.Generator) -> PairMix | None:
    """The draw of one pair (None: left unmixed), apart from the pixels so the device decode
    replays it."""
    if rng.random() >= mix.prob:
        return None
    use_cutmix = mix.cutmix_alpha > 0 and (mix.mixup_alpha <= 0 or rng.random() < mix.switch_prob)
    if use_cutmix:
        lam = float(rng.beta(mix.cutmix_alpha, mix.cutmix_alpha))
        top, bottom, left, right = cutmix_box(height, width, lam, rng)
        area = (bottom - top) * (right - left) / (height * width)
        return PairMix(a, b, 1.0 - area, (top, bottom, left, right))
    return PairMix(a, b, float(rng.beta(mix.mixup_alpha, mix.mixup_alpha)))


def apply_pair(images: np.ndarray, pair: PairMix) -> None:
    """Mix rows pair.a and pair.b of float32 [B, C, H, W] `images` in place."""
    a, b = pair.a, pair.b
    if pair.box is not None:
        top, bottom, left, right = pair.box
        region = (slice(None), slice(top, bottom), slice(left, right))
        patch_a = images[a][region].copy()
        images[a][region] = images[b][region]
        images[b][region] = patch_a
        return
    lam = pair.lam
    xa, xb = images[a].copy(), images[b]
    images[a] = xa * np.float32(lam) + xb * np.float32(1 - lam)
    images[b] = xb * np.float32(lam) + xa * np.float32(1 - lam)


def mix_pair(images: np.ndarray, a: int, b: int, mix: MixConfig, rng: np.random.Generator
             ) -> float:
    """Mix rows a and b of `images` in place; returns the weight of each row's own label."""
    pair = draw_pair(a, b, images.shape[-2], images.shape[-1], mix, rng)
    if pair is None:
        return 1.0
    apply_pair(images, pair)
    return pair.lam


def mix_batch(images: np.ndarray, labels: np.ndarray, positions: np.ndarray,
              sample_ids: np.ndarray, epochs: np.ndarray, seed: int, mix: MixConfig
              ) -> np.ndarray:
    """Mix `images` (float32 [B, C, H, W], in place) in position pairs; returns the soft targets
    float32 [B, K]. Rows of skipped samples (sample id -1) are neither mixed nor partners."""
    targets, pairs = mix_draws(labels, positions, sample_ids, epochs, seed, mix,
                               images.shape[-2], images.shape[-1])
    for pair in pairs:
        apply_pair(images, pair)
    return targets


def mix_draws(labels: np.ndarray, positions: np.ndarray, sample_ids: np.ndarray,
              epochs: np.ndarray, seed: int, mix: MixConfig, height: int, width: int
              ) -> tuple[np.ndarray, list[PairMix]]:
    """The soft targets float32 [B, K] and the pairs' draws, without touching pixels."""
    targets = smoothed_one_hot(labels, mix.num_classes, mix.label_smoothing)
    pairs: list[PairMix] = []
    if not mix.mixes:
        return targets, pairs
    row_of = {int(p): j for j, p in enumerate(positions.tolist())}
    for j, pos in enumerate(positions.tolist()):
        k = row_of.get(pos ^ 1)
        if k is None:
            raise ValueError(f"mixup/cutmix mix stream positions in pairs, but position {pos}'s"
                             " partner is on another rank: make the per-rank micro-batch even")
        if pos % 2 or sample_ids[j] < 0 or sample_ids[k] < 0:
            continue
        rng = sample_rng(seed, int(epochs[j]), int(sample_ids[j]), TAG_MIX)
        pair = draw_pair(j, k, height, width, mix, rng)
        if pair is None:
            continue
        pairs.append(pair)
        lam = pair.lam
        own_j, own_k = targets[j].copy(), targets[k].copy()
        targets[j] = own_j * np.float32(lam) + own_k * np.float32(1 - lam)
        targets[k] = own_k * np.float32(lam) + own_j * np.float32(1 - lam)
    return targets, pairs
