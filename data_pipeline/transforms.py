"""Raw fields of one sample -> the arrays of one batch row (runs in DataLoader workers).

Images: PIL decode (JPEGs at reduced scale when the crop allows), mode conversion, train-time
random-resized-crop / flip / RandAugment or 3-Augment / color and hue jitter (`augment.py`) or
resize, eval-time center crop, normalise to float32 CHW, train-time random erasing; mixup/cutmix
+ label smoothing on the collated micro-batch (`mixup.py`, applied by the source that knows the
stream positions).
Tokens: a packed sequence of L+1 ids -> tokens/targets of length L; with packed documents,
`position_ids` restart at each document and `doc_ids` number them, and the target that would
cross into the next document is IGNORE_INDEX.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.augment import (
    TAG_CROP,
    TAG_ERASE,
    TAG_FLIP,
    TAG_JITTER,
    TAG_POLICY,
    Box,
    center_crop_box,
    color_jitter,
    draft_for,
    parse_erasing,
    parse_policy,
    random_resized_crop_box,
    sample_rng,
)
from data_pipeline.config import IGNORE_INDEX, DataConfig
from data_pipeline.decode import IMAGE_EXTS, decode_field, is_image_encoding, open_image
from data_pipeline.errors import BadSampleError, where

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "image", "img", "image.png", "image.jpg", "bmp", "ppm")
LABEL_KEYS = ("cls", "label", "target", "class", "y", "label.cls", "cls2")
TOKEN_KEYS = ("tokens", "tokens.npy", "input_ids", "input_ids.npy", "ids.npy")
DOC_KEYS = ("doc_starts", "doc_starts.npy")
BOUNDARY_MODES = ("none", "position_ids", "doc_ids")


def pick(fields: dict, wanted: str, candidates: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if wanted in fields else None
    for name in candidates:
        if name in fields:
            return name
    return None


def image_field(fields: dict, cfg: DataConfig) -> str | None:
    """The field holding the image: data.image_key, a common name, or any image extension."""
    return pick(fields, cfg.image_key, IMAGE_KEYS) or next(
        (f for f in fields if f.rsplit(".", 1)[-1] in IMAGE_EXTS), None)


def image_and_label_fields(raw: dict, cfg: DataConfig, shard: str, key: str) -> tuple[str, str]:
    """The sample's image and label field names; a sample lacking either is bad (named)."""
    img_key = image_field(raw, cfg)
    lbl_key = pick(raw, cfg.label_key, LABEL_KEYS)
    if img_key is None or lbl_key is None:
        raise BadSampleError(f"{where(shard, key)}: no image/label field among {sorted(raw)}")
    return img_key, lbl_key


def image_array(image: Any, cfg: DataConfig) -> np.ndarray:
    """A decoded image as uint8 [C, H, W], in data.image_mode and resized to data.image_size."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if cfg.image_mode and image.mode != cfg.image_mode:
        image = image.convert(cfg.image_mode)
    if cfg.image_size and image.size != (cfg.image_size, cfg.image_size):
        image = image.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def detect_kind(field_names: list[str], cfg: DataConfig) -> str:
    """'tokens' or 'images', from the fields present in a sample."""
    fields = dict.fromkeys(field_names)
    if pick(fields, cfg.tokens_key, TOKEN_KEYS):
        return "tokens"
    if image_field(fields, cfg):
        return "images"
    if fields.keys() & {"txt", "text", "json"}:
        raise ValueError(f"the samples hold raw text (fields {sorted(field_names)}), not token"
                         " ids: tokenize the set once with `pretrain data build text --src URL"
                         " --tokenizer tokenizer.json` and train on its output")
    raise ValueError(f"cannot tell images from tokens by the fields {sorted(field_names)}; set "
                     "data.image_key/label_key or data.tokens_key")


class LabelledArrays:
    """The batch side shared by image and latent rows: an `image` array of `self.shape` and an
    integer label; `pad()` is the row used for padding and skipped samples."""

    shape: tuple[int, ...]

    def pad(self) -> dict[str, Any]:
        return {"image": np.zeros(self.shape, np.float32), "label": IGNORE_INDEX}

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {
            "image": np.stack([r["image"] for r in rows]),
            "label": np.asarray([r["label"] for r in rows], np.int64),
        }


class ImageRows(LabelledArrays):
    """Decodes and augments image samples."""

    kind = "images"

    def __init__(self, cfg: DataConfig, channels: int, height: int, width: int, train: bool):
        self.cfg, self.train = cfg, train
        self.shape = (channels, height, width)
        mean = np.asarray(cfg.image_mean, np.float32)
        std = np.asarray(cfg.image_std, np.float32)
        if mean.size not in (1, channels) or std.size not in (1, channels):
            raise ValueError(f"data.image_mean/std need 1 or {channels} values")
        self.scale = (1.0 / (255.0 * std)).reshape(-1, 1, 1).astype(np.float32)
        self.shift = (mean / std).reshape(-1, 1, 1).astype(np.float32)
        self.policy = parse_policy(cfg.auto_augment)
        self.erasing = parse_erasing(cfg.random_erasing, cfg.erase_scale, cfg.erase_ratio,
                                     cfg.erase_mode, cfg.erase_count)
        if not 0 <= cfg.hue_jitter <= 0.5:
            raise ValueError(f"data.hue_jitter={cfg.hue_jitter}: need 0..0.5 (of the hue circle)")
        self.crop = train and cfg.random_resized_crop
        self.center_crop = not train and cfg.eval_crop_fraction > 0
        if (self.crop or cfg.eval_crop_fraction) and not cfg.image_size:
            raise ValueError("data.random_resized_crop / eval_crop_fraction need data.image_size")
        if not 0 <= cfg.eval_crop_fraction <= 1:
            raise ValueError(f"data.eval_crop_fraction={cfg.eval_crop_fraction}: need 0..1")
        for name in ("crop_scale", "crop_ratio"):
            low_high = getattr(cfg, name)
            if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
                raise ValueError(f"data.{name}={low_high}: need [low, high] with 0 < low <= high")

    def __call__(self, raw: dict[str, tuple[str, bytes]], shard: str, key: str, sample_id: int,
                 epoch: int) -> dict[str, Any]:
        img_key, lbl_key = image_and_label_fields(raw, self.cfg, shard, key)
        try:
            encoding, data = raw[img_key]
            image = open_image(data) if is_image_encoding(encoding) else decode_field(
                encoding, data)
            label = int(decode_field(*raw[lbl_key]))
            arr = self._pixels(image, sample_id, epoch)
        except BadSampleError:
            raise
        except Exception as e:
            raise BadSampleError(
                f"{where(shard, key)}: cannot decode: {type(e).__name__}: {e}") from e
        if arr.shape != self.shape:
            raise BadSampleError(
                f"{where(shard, key)}: image shape {arr.shape}, expected {self.shape}"
                " (set data.image_size / data.image_mode to make them uniform)"
            )
        return {"image": arr, "label": label}

    def _resized_box(self, image: Image.Image, box: Box) -> Image.Image:
        """The box of `image` resized to image_size square, decoding a JPEG at reduced scale
        when that still leaves the box at least image_size pixels a side."""
        size = self.cfg.image_size
        if self.cfg.jpeg_draft:
            box = draft_for(image, box, size)
        if self.cfg.image_mode and image.mode != self.cfg.image_mode:
            image = image.convert(self.cfg.image_mode)
        return image.resize((size, size), Image.BILINEAR, box=box)

    def _pixels(self, image: Any, sample_id: int, epoch: int) -> np.ndarray:
        cfg = self.cfg
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if self.crop:
            rng = sample_rng(cfg.seed, epoch, sample_id, TAG_CROP)
            box = random_resized_crop_box(
                *image.size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), rng
            )
            image = self._resized_box(image, box)
        elif self.center_crop:
            image = self._resized_box(image, center_crop_box(*image.size, cfg.eval_crop_fraction))
        elif cfg.image_size and cfg.jpeg_draft and getattr(image, "format", None) == "JPEG":
            image = self._resized_box(image, (0, 0, *image.size))  # the plain resize, drafted
        if self.train:
            if cfg.random_flip and sample_rng(cfg.seed, epoch, sample_id, TAG_FLIP).random() < 0.5:
                image = _as_pil(image, cfg).transpose(Image.FLIP_LEFT_RIGHT)
            if self.policy is not None:
                rng = sample_rng(cfg.seed, epoch, sample_id, TAG_POLICY)
                image = self.policy(_as_pil(image, cfg), rng)
            if cfg.color_jitter > 0 or cfg.hue_jitter > 0:
                rng = sample_rng(cfg.seed, epoch, sample_id, TAG_JITTER)
                image = color_jitter(_as_pil(image, cfg), cfg.color_jitter, rng, cfg.hue_jitter)
        # contiguous CHW first: float ops on the transposed HWC view ran ~15x slower
        arr = np.ascontiguousarray(image_array(image, cfg)).astype(np.float32)
        arr *= self.scale
        arr -= self.shift
        if self.train and self.erasing is not None:
            self.erasing(arr, sample_rng(cfg.seed, epoch, sample_id, TAG_ERASE))
        return arr


def _as_pil(image: Image.Image, cfg: DataConfig) -> Image.Image:
    """The image in data.image_mode at data.image_size (the input of the PIL augmentations)."""
    if cfg.image_mode and image.mode != cfg.image_mode:
        image = image.convert(cfg.image_mode)
    if cfg.image_size and image.size != (cfg.image_size, cfg.image_size):
        image = image.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    return image


class TokenRows:
    """Decodes packed token sequences of seq_len + 1 ids."""

    kind = "tokens"

    def __init__(self, cfg: DataConfig, seq_len: int):
        if cfg.packing_boundaries not in BOUNDARY_MODES:
            raise ValueError(
                f"data.packing_boundaries={cfg.packing_boundaries!r}: choose one of"
                f" {BOUNDARY_MODES}"
            )
        self.cfg, self.seq_len = cfg, seq_len
        self.mode = cfg.packing_boundaries

    def __call__(
        self, raw: dict[str, tuple[str, bytes]], shard: str, key: str, sample_id: int, epoch: int
    ) -> dict[str, Any]:
        tok_key = pick(raw, self.cfg.tokens_key, TOKEN_KEYS)
        if tok_key is None:
            raise BadSampleError(f"{where(shard, key)}: no tokens field among {sorted(raw)}")
        try:
            seq = np.asarray(decode_field(*raw[tok_key])).astype(np.int64).reshape(-1)
            doc_key = pick(raw, "", DOC_KEYS)
            starts = (
                np.asarray(decode_field(*raw[doc_key])).astype(np.int64).reshape(-1)
                if doc_key and self.mode != "none"
                else None
            )
        except Exception as e:
            raise BadSampleError(
                f"{where(shard, key)}: cannot decode: {type(e).__name__}: {e}"
            ) from e
        if len(seq) != self.seq_len + 1:
            raise BadSampleError(
                f"{where(shard, key)}: {len(seq)} token ids, expected seq_len + 1 ="
                f" {self.seq_len + 1}"
            )
        if starts is not None and starts.size and (starts.min() < 0 or starts.max() >= len(seq)):
            raise BadSampleError(f"{where(shard, key)}: doc_starts out of range")
        return self.row(seq, starts)

    def row(self, seq: np.ndarray, starts: np.ndarray | None) -> dict[str, Any]:
        """Inputs, shifted targets (+ position_ids / doc_ids) of one packed sequence."""
        row = {"tokens": seq[:-1], "targets": seq[1:].copy()}
        if self.mode != "none":
            flags = np.zeros(len(seq), np.int64)
            flags[0] = 1
            if starts is not None:
                flags[starts] = 1
            doc = np.cumsum(flags) - 1
            first = np.flatnonzero(flags)
            pos = np.arange(len(seq)) - first[doc]
            row["targets"][doc[1:] != doc[:-1]] = IGNORE_INDEX
            row["position_ids"] = pos[:-1]
            if self.mode == "doc_ids":
                row["doc_ids"] = doc[:-1]
        return row

    def pad(self) -> dict[str, Any]:
        row = {
            "tokens": np.zeros(self.seq_len, np.int64),
            "targets": np.full(self.seq_len, IGNORE_INDEX, np.int64),
        }
        if self.mode != "none":
            row["position_ids"] = np.arange(self.seq_len, dtype=np.int64)
            if self.mode == "doc_ids":
                row["doc_ids"] = np.zeros(self.seq_len, np.int64)
        return row

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
