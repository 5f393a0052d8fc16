"""The GPU check's JPEG case (bench/gpu_check.py): data.decode_device=cuda against the
CPU-worker path on the same WDS shards, same workers, same augmentation (random-resized-crop,
flip, colour jitter, random erasing, mixup/cutmix, label smoothing at 224 px); samples/s of
each with the batch on the device, and how far the device's pixels are from the PIL path's
(nvJPEG vs libjpeg-turbo, in uint8 levels). Under --tiny on a CPU the device step runs on the
CPU with PIL-decoded input, so the suite exercises everything but the nvJPEG call.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.bench_vision import make_folder
from data_pipeline import DataConfig, build_loader, device_decode, pixel_ops
from data_pipeline.image_build import build_image_folder
from data_pipeline.sharded import ShardedBatches
from data_pipeline.stream import SourceTrainLoader

STD = [0.229, 0.224, 0.225]


def decode_cfg(train_url: str, size: int, batch: int, workers: int) -> DataConfig:
    return DataConfig(format="wds", train_url=train_url, global_batch_size=batch,
                      num_workers=workers, seed=0, image_mode="RGB", image_size=size,
                      random_resized_crop=True, random_flip=True, color_jitter=0.3,
                      random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0,
                      label_smoothing=0.1, num_classes=10, image_mean=[0.485, 0.456, 0.406],
                      image_std=STD)


def device_loader(cfg: DataConfig, device: torch.device) -> SourceTrainLoader:
    """The trainer's loader under data.decode_device=cuda (on a CPU: the same path with the
    device step on the CPU and PIL decoding)."""
    dcfg = replace(cfg, decode_device="cuda")
    finish = None if device.type == "cuda" else device
    return SourceTrainLoader(ShardedBatches(dcfg, train=True, finish_device=finish), dcfg, 0, 1)


def rate(loader, device: torch.device, warmup: int, batches: int) -> float:
    """samples/s of `loader` with each batch's images on `device` (as the trainer needs them)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)["image"].to(device)
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    start = time.perf_counter()
    samples = 0
    for _ in range(batches):
        image = next(it)["image"].to(device, non_blocking=True)
        samples += image.shape[0]
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return samples / (time.perf_counter() - start)


def pixel_gap(cfg: DataConfig, device: torch.device, batches: int) -> dict:
    """The device path against the PIL path with full-size decoding (draft off): uint8 levels
    of difference in the normalised images; labels and soft labels must be bitwise equal."""
    ref_cfg = replace(cfg, jpeg_draft=False, num_workers=0)
    ref, got = iter(build_loader(ref_cfg, 0, 1)), iter(device_loader(ref_cfg, device))
    std = torch.tensor(STD).view(1, 3, 1, 1)
    worst, total, equal, count, labels_equal = 0.0, 0.0, 0, 0, True
    for _ in range(batches):
        a, b = next(ref), next(got)
        labels_equal &= all(torch.equal(a[k], b[k].cpu()) for k in ("label", "soft_label"))
        diff = ((a["image"] - b["image"].cpu()).abs() * 255 * std).round(decimals=3)
        worst, total = max(worst, diff.max().item()), total + diff.sum().item()
        equal, count = equal + int((diff == 0).sum()), count + diff.numel()
    return {"max_levels": worst, "mean_levels": total / count, "equal_share": equal / count,
            "labels_equal": labels_equal}


def per_image_finish(batch: dict, rows, device: torch.device) -> torch.Tensor:
    """The device step image by image (each op on one image, no padding, no chunks, no
    scatter): the reference that finish_batch's batching must equal bit for bit."""
    cfg, (channels, height, width) = rows.cfg, rows.shape
    images = torch.zeros((len(batch["label"]), channels, height, width), device=device)
    scale, shift = torch.from_numpy(rows.scale).to(device), torch.from_numpy(rows.shift).to(device)
    for j, image in enumerate(device_decode.decode_images(batch, device, cfg.image_mode)):
        if image is None:
            continue
        image = pixel_ops.resize_box(device_decode._convert(image, cfg.image_mode),
                                     tuple(batch["box"][j].tolist()), height)
        image = image.flip(-1) if batch["flip"][j] else image
        order = batch["jitter_order"][j].tolist()
        if order[0] >= 0:
            image = pixel_ops.color_jitter(image, batch["jitter"][j].tolist(), order)
        images[j] = device_decode._normalise(image, scale, shift)
    device_decode._erase(images, batch["erase_boxes"].tolist(), batch["erase_fill"].to(device))
    if "mix" in batch:
        device_decode._mix(images, batch["mix"].tolist())
    return images


def batched_vs_per_image(cfg: DataConfig, device: torch.device, batch: int) -> dict:
    """The batched device step against the per-image reference on the same deferred batches,
    on `device`: bitwise equal (float64 products of integers are exact on any BLAS), and each
    one's seconds per batch (second call of each: the first warms up)."""
    source = ShardedBatches(replace(cfg, decode_device="cuda"), train=True,
                            finish_device=None if device.type == "cuda" else device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn, deferred: dict) -> tuple[torch.Tensor, float]:
        fn(deferred)
        sync()
        begin = time.perf_counter()
        out = fn(deferred)
        sync()
        return out, time.perf_counter() - begin

    def batched(d: dict) -> torch.Tensor:
        return source.finish(d)["image"]

    def per_image(d: dict) -> torch.Tensor:
        return per_image_finish(d, source.rows, device)

    equal, seconds = True, {"batched_s_per_batch": 0.0, "per_image_s_per_batch": 0.0}
    for start in (0, batch):
        deferred = source.batch(np.arange(start, start + batch), None)
        got, s_batched = timed(batched, deferred)
        want, s_per_image = timed(per_image, deferred)
        equal &= torch.equal(got, want)
        seconds["batched_s_per_batch"] += s_batched / 2
        seconds["per_image_s_per_batch"] += s_per_image / 2
    return {"batched_equals_per_image": bool(equal), **seconds}


class StageTimer:
    """Seconds the trainer's process spends in `finish_batch` and, inside it, in the decode
    call (device synchronised around each), by patching the two module functions: where the
    device path's time goes, without a profiler."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {"finish_batch": 0.0, "decode_images": 0.0}

    def _wrap(self, name: str, fn):
        def timed_call(*args, **kwargs):
            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                self.seconds[name] += time.perf_counter() - start
        return timed_call

    def __enter__(self) -> StageTimer:
        import data_pipeline.device_decode as dd
        import data_pipeline.sharded as sh

        self._saved = (sh.finish_batch, dd.decode_images)
        sh.finish_batch = self._wrap("finish_batch", sh.finish_batch)
        dd.decode_images = self._wrap("decode_images", dd.decode_images)
        return self

    def __exit__(self, *exc) -> None:
        import data_pipeline.device_decode as dd
        import data_pipeline.sharded as sh

        sh.finish_batch, dd.decode_images = self._saved


def decode_check(device: torch.device, tiny: bool, work: Path) -> dict:
    """ImageNet-like JPEGs (~500x375) into WDS shards, then both paths' samples/s and the
    device path's distance from the PIL pixels."""
    images, size, batch = (16, 24, 4) if tiny else (1024, 224, 128)
    workers = 0 if tiny else min(8, os.cpu_count() or 1)
    warmup, batches = (1, 3) if tiny else (3, 12)
    folder, shards = work / "jpeg_folder", work / "jpeg_wds"
    make_folder(str(folder), images)
    build_image_folder(str(folder), str(shards), "wds", shard_samples=max(1, images // 16),
                       val_fraction=0.0, workers=1)
    cfg = decode_cfg(str(shards / "train"), size, batch, workers)
    cpu_path = rate(build_loader(cfg, 0, 1), device, warmup, batches)
    with StageTimer(device) as stages:
        device_path = rate(device_loader(cfg, device), device, warmup, batches)
    per_batch = {f"{k}_s_per_batch": v / (warmup + batches) for k, v in stages.seconds.items()}
    return {**per_batch, **batched_vs_per_image(cfg, device, batch), "images": images,
            "size": size, "batch": batch, "workers": workers,
            "cpu_workers_samples_per_s": cpu_path, "device_decode_samples_per_s": device_path,
            "ratio": device_path / cpu_path, **pixel_gap(cfg, device, 2)}
