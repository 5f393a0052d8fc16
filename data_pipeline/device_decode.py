"""JPEG decode on the GPU (data.decode_device: cuda): workers draw, the device decodes.

Loader workers do not decode. For each sample they read the JPEG header (its size), make every
random draw of the CPU path from the same generators keyed by (seed, epoch, sample id) -- crop
box, flip, colour jitter factors and order, erasing boxes and fills, mixup/cutmix pairs -- and
hand over the JPEG bytes with those parameters (`DeferredImageRows`). In the trainer's process
`finish_batch` decodes the micro-batch with one batched `torchvision.io.decode_jpeg(...,
device="cuda")` (nvJPEG) and replays the ops in torch (`pixel_ops.py`). A resume therefore
restores exactly what it does on the CPU path: a position in the order; the parameters follow.

On a CPU (the tests) the same ops run on PIL-decoded tensors. What differs from the PIL path:
nvJPEG's IDCT and chroma upsampling against libjpeg-turbo's (a few levels of 255), no DCT-scaled
(draft) decode, and PIL 13's pass order for crop boxes that need both passes (<= 1 level).
RandAugment/3-Augment and hue jitter are PIL ops not ported: config load refuses them here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from data_pipeline.augment import (
    TAG_CROP,
    TAG_ERASE,
    TAG_FLIP,
    TAG_JITTER,
    center_crop_box,
    jitter_draws,
    random_resized_crop_box,
    sample_rng,
)
from data_pipeline.config import IGNORE_INDEX
from data_pipeline.decode import decode_field, is_image_encoding, open_image
from data_pipeline.errors import BadSampleError, DataError, where
from data_pipeline.mixup import MixConfig, mix_draws
from data_pipeline.pixel_ops import color_jitter_batch, resize_boxes, to_luma
from data_pipeline.transforms import ImageRows, image_and_label_fields

DEFERRED_KEY = "jpeg"  # a batch holding this key still has to go through finish_batch


def cuda_decoder() -> Any:
    """torchvision.io.decode_jpeg, or one line naming what is missing for the GPU decode."""
    try:
        from torchvision.io import decode_jpeg
    except Exception as e:
        raise ValueError("data.decode_device=cuda needs torchvision (torchvision.io.decode_jpeg),"
                         f" which cannot be imported here: {type(e).__name__}: {e}") from e
    if not torch.cuda.is_available():
        raise ValueError("data.decode_device=cuda but this machine has no CUDA device")
    return decode_jpeg


class DeferredImageRows(ImageRows):
    """ImageRows for the device decode: the JPEG bytes plus the sample's keyed draws."""

    def __call__(self, raw: dict[str, tuple[str, bytes]], shard: str, key: str, sample_id: int,
                 epoch: int) -> dict[str, Any]:
        img_key, lbl_key = image_and_label_fields(raw, self.cfg, shard, key)
        encoding, data = raw[img_key]
        try:
            image = open_image(data) if is_image_encoding(encoding) else None
            label = int(decode_field(*raw[lbl_key]))
        except Exception as e:
            raise BadSampleError(
                f"{where(shard, key)}: cannot read: {type(e).__name__}: {e}") from e
        if image is None or image.format != "JPEG":
            found = getattr(image, "format", None) or encoding
            raise BadSampleError(f"{where(shard, key)}: {found} image; data.decode_device=cuda"
                                 " decodes JPEG only (use decode_device=cpu)")
        return {"jpeg": np.frombuffer(data, np.uint8), "label": label,
                **self.draws(image.size, sample_id, epoch)}

    def draws(self, size: tuple[int, int], sample_id: int, epoch: int) -> dict[str, Any]:
        """Every draw `ImageRows._pixels` makes for this sample, in its generators."""
        cfg, width, height = self.cfg, *size
        if self.crop:
            rng = sample_rng(cfg.seed, epoch, sample_id, TAG_CROP)
            box = random_resized_crop_box(width, height, tuple(cfg.crop_scale),
                                          tuple(cfg.crop_ratio), rng)
        elif self.center_crop:
            box = center_crop_box(width, height, cfg.eval_crop_fraction)
        else:
            box = (0, 0, width, height)
        out: dict[str, Any] = {"box": np.asarray(box, np.float64), "flip": False,
                               "jitter": np.ones(3, np.float32), "jitter_order": np.full(3, -1)}
        if not self.train:
            out["erase"] = []
            return out
        if cfg.random_flip:
            out["flip"] = sample_rng(cfg.seed, epoch, sample_id, TAG_FLIP).random() < 0.5
        if cfg.color_jitter > 0:
            factors, _, order = jitter_draws(cfg.color_jitter,
                                             sample_rng(cfg.seed, epoch, sample_id, TAG_JITTER))
            out["jitter"], out["jitter_order"] = np.asarray(factors, np.float32), np.asarray(order)
        out["erase"] = [] if self.erasing is None else self.erasing.draw(
            self.shape, sample_rng(cfg.seed, epoch, sample_id, TAG_ERASE))
        return out

    def pad(self) -> dict[str, Any]:
        return {"jpeg": np.zeros(0, np.uint8), "label": IGNORE_INDEX, "box": np.zeros(4),
                "flip": False, "jitter": np.ones(3, np.float32), "jitter_order": np.full(3, -1),
                "erase": []}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Variable-length fields flattened with offsets, so the batch is plain tensors."""
        lengths = [len(r["jpeg"]) for r in rows]
        erase_boxes, erase_fill, erase_shapes = [], [], []
        for j, r in enumerate(rows):
            for box, fill in r["erase"]:
                erase_boxes.append((j, *box))
                erase_shapes.append(fill.shape)
                erase_fill.append(fill.ravel())
        return {
            "jpeg": np.concatenate([r["jpeg"] for r in rows]) if rows else np.zeros(0, np.uint8),
            "jpeg_offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "label": np.asarray([r["label"] for r in rows], np.int64),
            "box": np.stack([r["box"] for r in rows]).astype(np.float64),
            "flip": np.asarray([r["flip"] for r in rows], np.bool_),
            "jitter": np.stack([r["jitter"] for r in rows]).astype(np.float32),
            "jitter_order": np.stack([r["jitter_order"] for r in rows]).astype(np.int64),
            # one row per box: row, left, top, right, bottom, fill is per pixel (1) or not (0)
            "erase_boxes": np.asarray([(*b, int(s[1:] != (1, 1))) for b, s in
                                       zip(erase_boxes, erase_shapes)], np.int64).reshape(-1, 6),
            "erase_fill": (np.concatenate(erase_fill) if erase_fill
                           else np.zeros(0, np.float32)).astype(np.float32),
        }

    def add_mix(self, arrays: dict[str, np.ndarray], positions: np.ndarray,
                sample_ids: np.ndarray, epochs: np.ndarray, seed: int, mix: MixConfig) -> None:
        """mixup/cutmix of the CPU path as draws: soft labels now, pixels in finish_batch."""
        _, height, width = self.shape
        targets, pairs = mix_draws(arrays["label"], positions, sample_ids, epochs, seed, mix,
                                   height, width)
        arrays["soft_label"] = targets
        arrays["mix"] = np.asarray(
            [(p.a, p.b, p.lam, *(p.box if p.box is not None else (-1, -1, -1, -1)))
             for p in pairs], np.float64).reshape(-1, 7)


def decode_images(batch: dict[str, torch.Tensor], device: torch.device, mode: str
                  ) -> list[torch.Tensor | None]:
    """Each row's JPEG as uint8 [C, H, W] on `device` (None for padding rows): nvJPEG in one
    batched call on CUDA, PIL elsewhere (the tests' stand-in for the same pixels)."""
    offsets = batch["jpeg_offsets"].tolist()
    data = batch["jpeg"].cpu()
    rows = [j for j in range(len(offsets) - 1) if offsets[j + 1] > offsets[j]]
    chunks = [data[offsets[j]:offsets[j + 1]] for j in rows]
    out: list[torch.Tensor | None] = [None] * (len(offsets) - 1)
    if device.type == "cuda":
        decode_jpeg = cuda_decoder()  # first: its message names what is missing
        from torchvision.io import ImageReadMode

        read = ImageReadMode.RGB if mode in ("RGB", "L") else ImageReadMode.UNCHANGED

        def decode(chunk_list: list[torch.Tensor]) -> list[torch.Tensor]:
            return decode_jpeg(chunk_list, mode=read, device=device)
    else:
        def decode(chunk_list: list[torch.Tensor]) -> list[torch.Tensor]:
            return [_pil_tensor(bytes(c.numpy())) for c in chunk_list]
    try:
        images = decode(chunks) if chunks else []
    except Exception:  # noqa: BLE001 - find and name the sample that fails
        for j, chunk in zip(rows, chunks):
            try:
                decode([chunk])
            except Exception as e:  # noqa: BLE001
                raise DataError(f"sample id {int(batch['sample_id'][j])}: cannot decode its JPEG"
                                f" on {device.type}: {type(e).__name__}: {e}") from e
        raise
    for j, image in zip(rows, images):
        out[j] = image
    return out


def _pil_tensor(data: bytes) -> torch.Tensor:
    image = open_image(data)
    image.load()
    arr = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"), np.uint8)
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def finish_batch(batch: dict[str, torch.Tensor], rows: DeferredImageRows,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Decode and transform a deferred micro-batch on `device`: the CPU path's pixels
    (float32 [B, C, H, W] "image") from the workers' draws. After the decode, each op runs
    once over the batch (`pixel_ops.resize_boxes`, `color_jitter_batch`), not per image."""
    cfg = rows.cfg
    channels, height, width = rows.shape
    decoded = decode_images(batch, device, cfg.image_mode)
    present = [j for j, image in enumerate(decoded) if image is not None]
    images = torch.zeros((len(decoded), channels, height, width), dtype=torch.float32,
                         device=device)
    if present:
        converted = [_convert(decoded[j], cfg.image_mode) for j in present]
        for j, image in zip(present, converted):
            if image.shape[0] != channels or height != width:
                raise DataError(f"sample id {int(batch['sample_id'][j])}: image shape"
                                f" {(image.shape[0], height, height)}, expected"
                                f" {(channels, height, width)}")
        boxes = batch["box"].tolist()
        done = resize_boxes(converted, [tuple(boxes[j]) for j in present], height)
        flips = [i for i, j in enumerate(present) if bool(batch["flip"][j])]
        if flips:
            index = torch.tensor(flips, device=device)
            done[index] = done[index].flip(-1)
        orders = batch["jitter_order"].tolist()
        if any(orders[j][0] >= 0 for j in present):
            factors = batch["jitter"][present].to(device)
            done = color_jitter_batch(done, factors, [orders[j] for j in present])
        scale = torch.from_numpy(rows.scale).to(device)
        shift = torch.from_numpy(rows.shift).to(device)
        images[torch.tensor(present, device=device)] = _normalise(done, scale, shift)
    _erase(images, batch["erase_boxes"].tolist(), batch["erase_fill"].to(device))
    if "mix" in batch:
        _mix(images, batch["mix"].tolist())
    out = {k: v for k, v in batch.items() if k in ("label", "soft_label", "sample_id")}
    out["image"] = images
    return out


def _convert(image: torch.Tensor, mode: str) -> torch.Tensor:
    """PIL's convert to data.image_mode of a decoded uint8 [C, H, W] (L <-> RGB)."""
    if mode == "L" and image.shape[0] == 3:
        return to_luma(image)
    if mode == "RGB" and image.shape[0] == 1:
        return image.expand(3, -1, -1)
    return image


def _normalise(image: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The CPU path's `arr *= scale; arr -= shift` in float32, op for op."""
    out = image.to(torch.float32) * scale
    return out - shift


def _erase(images: torch.Tensor, boxes: list[list[int]], fill: torch.Tensor) -> None:
    """Write the drawn erasing fills, in the order drawn (later boxes over earlier ones)."""
    at = 0
    channels = images.shape[1]
    for row, left, top, right, bottom, per_pixel in boxes:
        shape = (channels, bottom - top, right - left) if per_pixel else (channels, 1, 1)
        n = shape[0] * shape[1] * shape[2]
        images[row, :, top:bottom, left:right] = fill[at:at + n].view(shape)
        at += n


def _mix(images: torch.Tensor, pairs: list[list[float]]) -> None:
    """`mixup.apply_pair` in torch: float32 blends op for op, cutmix box swaps."""
    for a, b, lam, top, bottom, left, right in pairs:
        a, b = int(a), int(b)
        if top >= 0:
            region = (slice(None), slice(int(top), int(bottom)), slice(int(left), int(right)))
            patch_a = images[a][region].clone()
            images[a][region] = images[b][region]
            images[b][region] = patch_a
            continue
        lam32 = torch.tensor(lam, dtype=torch.float32, device=images.device)
        one_minus = torch.tensor(1 - lam, dtype=torch.float32, device=images.device)
        xa, xb = images[a].clone(), images[b].clone()
        images[a] = xa * lam32 + xb * one_minus
        images[b] = xb * lam32 + xa * one_minus
