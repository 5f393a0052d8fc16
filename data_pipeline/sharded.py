"""Sharded datasets (wds / mds, one or a mixture) as a batch source for the shared loaders of
`stream.py`: stream positions -> shards and samples -> decoded, transformed, collated batches."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from data_pipeline.config import DataConfig
from data_pipeline.decode import decode_field
from data_pipeline.device_decode import (
    DEFERRED_KEY,
    DeferredImageRows,
    cuda_decoder,
    finish_batch,
)
from data_pipeline.errors import ChecksumError, DataError, ShardNotFoundError
from data_pipeline.mixup import mix_batch, mix_config
from data_pipeline.order import Mixture
from data_pipeline.source import ShardedSource
from data_pipeline.transforms import (
    TOKEN_KEYS,
    ImageRows,
    TokenRows,
    detect_kind,
    image_array,
    image_field,
    pick,
)

log = logging.getLogger(__name__)
BAD_SAMPLE_POLICIES = ("error", "skip")


class Resolver:
    """Stream positions -> (source, canonical id, global id, epoch of that source)."""

    def __init__(self, sources: list[ShardedSource], mixture: Mixture | None, shuffled: bool):
        self.sources, self.mixture, self.shuffled = sources, mixture, shuffled
        sizes = [s.num_samples for s in sources]
        self.bases = np.concatenate([[0], np.cumsum(sizes)])[:-1].astype(np.int64)

    def __call__(self, positions: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self.mixture is None:
            which, inner = np.zeros(len(positions), np.int64), positions
        else:
            which, inner = self.mixture.locate(positions)
        ids = np.empty(len(positions), np.int64)
        epochs = np.empty(len(positions), np.int64)
        for d in np.unique(which):
            mask, src = which == d, self.sources[int(d)]
            n = src.num_samples
            ids[mask] = src.order.ids(inner[mask]) if self.shuffled else inner[mask] % n
            epochs[mask] = inner[mask] // src.num_samples
        return which, ids, ids + self.bases[which], epochs


class ShardedBatches:
    """wds / mds shards as a `contract.BatchSource`: read, decode, transform, collate.

    Train positions go through each dataset's shard-aware order (and the mixture, if several);
    eval positions are canonical ids of the validation shards.
    """

    def __init__(self, cfg: DataConfig, train: bool, finish_device: torch.device | None = None):
        """`finish_device`: where data.decode_device=cuda decodes (None = the current CUDA
        device; the tests pass the CPU, where the same ops run on PIL-decoded pixels)."""
        self.skip_bad = _check_policy(cfg)
        entries = sorted(cfg.mixture.items()) if train and cfg.mixture else [
            (cfg.train_url if train else cfg.val_url, 1.0)]
        self.seed, self.weights = cfg.seed, [float(w) for _, w in entries]
        shuffle = cfg.shuffle and train
        self.sources = [ShardedSource(url, cfg.format, cfg, shuffle=shuffle) for url, _ in entries]
        mixture = Mixture(self.weights, cfg.seed, cfg.mixture_block) if len(entries) > 1 else None
        self.resolver = Resolver(self.sources, mixture, shuffled=shuffle)
        self.rows = make_rows(cfg, self.sources[0], train=train)
        self.finish_device = finish_device
        if cfg.decode_device == "cuda":
            self.rows = _deferred(self.rows, cfg, train)
            if finish_device is None:
                cuda_decoder()  # one line naming what is missing, before any worker starts
        self.num_samples = sum(s.num_samples for s in self.sources)
        self.tokens_per_sample = self.rows.seq_len if isinstance(self.rows, TokenRows) else 0
        classes = int(self.sources[0].manifest.meta.get("num_classes", 0))
        self.mix = mix_config(cfg, classes) if train and isinstance(self.rows, ImageRows) else None

    @property
    def meta(self) -> dict:
        """The dataset's manifest metadata (kind, num_classes, image_shape, seq_len, vocab_size...)
        for sizing the model; from the first dataset of a mixture."""
        return dict(self.sources[0].manifest.meta)

    def identity(self) -> dict[str, Any]:
        return {"seed": self.seed, "num_samples": [s.num_samples for s in self.sources],
                "weights": self.weights}

    def mismatch_hint(self) -> str:
        return ""

    def batch(self, pos: np.ndarray, upcoming: np.ndarray | None) -> dict[str, torch.Tensor]:
        valid = np.flatnonzero(pos >= 0)
        which, ids, gids, epochs = self.resolver(pos[valid])
        if upcoming is not None:
            self._prefetch(upcoming)
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
        arrays = self.rows.collate(rows)
        if self.mix is not None:
            all_epochs = np.zeros(len(pos), np.int64)
            all_epochs[valid] = epochs
            if isinstance(self.rows, DeferredImageRows):
                self.rows.add_mix(arrays, pos, sample_ids, all_epochs, self.seed, self.mix)
            else:
                arrays["soft_label"] = mix_batch(arrays["image"], arrays["label"], pos,
                                                 sample_ids, all_epochs, self.seed, self.mix)
        batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
        batch["sample_id"] = torch.from_numpy(sample_ids)
        return batch

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """In the trainer's process: decode a deferred batch (data.decode_device=cuda) on the
        device; other batches pass through."""
        if DEFERRED_KEY not in batch:
            return batch
        device = self.finish_device or torch.device("cuda", torch.cuda.current_device())
        return finish_batch(batch, self.rows, device)

    def _prefetch(self, pos: np.ndarray) -> None:
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
    if kind == "latents":
        from data_pipeline.latents import LatentRows

        return LatentRows(cfg, meta, train)
    img_key = image_field(raw, cfg)
    if img_key is None:
        raise DataError(f"{shard}: sample {key!r} has no image field among {sorted(raw)}")
    image = decode_field(*raw[img_key])
    if cfg.patch_pack:
        from data_pipeline.navit import PatchPackRows

        if cfg.image_mode:
            image = image.convert(cfg.image_mode)
        return PatchPackRows(cfg, len(image.getbands()))
    c, h, w = image_array(image, cfg).shape
    return ImageRows(cfg, c, h, w, train)


def _deferred(rows: Any, cfg: DataConfig, train: bool) -> DeferredImageRows:
    """The device-decode row builder in place of the PIL one (images only)."""
    if not isinstance(rows, ImageRows):
        raise ValueError(f"data.decode_device=cuda decodes JPEG images; this is a"
                         f" {getattr(rows, 'kind', type(rows).__name__)} set")
    return DeferredImageRows(cfg, *rows.shape, train)


def _check_policy(cfg: DataConfig) -> bool:
    if cfg.on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"data.on_bad_sample={cfg.on_bad_sample!r}:"
                         f" choose one of {BAD_SAMPLE_POLICIES}")
    return cfg.on_bad_sample == "skip"
