"""Per-image augmentation for training, and the resize + center crop of evaluation (PIL ops).

Every random draw comes from a generator seeded by (data.seed, epoch, sample id, op tag), so an
image's augmentation is a pure function of which sample it is and in which epoch: a resumed run,
or one resumed on another world size or worker count, produces the same pixels bitwise.

Why PIL ops written here rather than a library: torchvision (and timm, which imports it) cannot
load against the CPU torch build; albumentations draws from a global RNG per Compose call and
pulls OpenCV; kornia draws whole batches from torch's RNG. None lets a draw be keyed by sample
id, and none decodes JPEG in DCT-reduced size (PIL's `draft`, libjpeg-turbo underneath), which
the crop geometry below feeds. The policies follow timm's definitions (RandAugment
`rand-m9-n2-mstd0.5`, DeiT III's 3-Augment) and torchvision's RandomResizedCrop sampling.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

# op tags: independent streams per transform (3 = the flip, as before this module existed;
# 6 = mixup.TAG_MIX; 8 = the posterior draw of latents.py)
TAG_CROP, TAG_FLIP, TAG_POLICY, TAG_JITTER, TAG_ERASE, TAG_LATENT = 1, 3, 4, 5, 7, 8
Box = tuple[float, float, float, float]  # left, upper, right, lower in source pixels


AUGMENT_KEYS = ("random_resized_crop", "crop_scale", "crop_ratio", "eval_crop_fraction",
                "auto_augment", "color_jitter", "hue_jitter", "random_erasing", "erase_mode",
                "erase_count", "erase_scale", "erase_ratio", "mixup_alpha", "cutmix_alpha",
                "label_smoothing")


def augment_keys_set(cfg: object) -> list[str]:
    """The data.* augmentation keys a recipe moved off their defaults (for refusing them where
    they would be ignored: in-memory sources, NaViT packing)."""
    defaults = type(cfg)()
    return [f"data.{k}" for k in AUGMENT_KEYS if getattr(cfg, k) != getattr(defaults, k)]


def sample_rng(seed: int, epoch: int, sample_id: int, tag: int) -> np.random.Generator:
    """The generator of one transform of one sample in one epoch."""
    return np.random.Generator(np.random.PCG64([seed, epoch, sample_id, tag]))


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float],
                            ratio: tuple[float, float], rng: np.random.Generator) -> Box:
    """torchvision's RandomResizedCrop sampling: area fraction ~ U(scale), log aspect ~ U(log
    ratio), 10 tries, then the whole image clipped to the ratio range (center)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int, fraction: float) -> Box:
    """Resize-the-short-side-to-size/fraction then center-crop-size, as one box in source
    pixels: a centered square of side fraction * short side."""
    side = min(width, height) * fraction
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def draft_for(image: Image.Image, box: Box, size: int) -> Box:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) while the crop still has at least
    `size` pixels a side; returns the box in the coordinates of the reduced image."""
    if image.format != "JPEG" or getattr(image, "tile", None) is None:
        return box
    width, height = image.size
    crop_w, crop_h = box[2] - box[0], box[3] - box[1]
    factor = min(crop_w / size, crop_h / size)
    if factor < 2:
        return box
    want = (math.ceil(width / factor), math.ceil(height / factor))
    image.draft(image.mode if image.mode in ("RGB", "L") else "RGB", want)
    sx, sy = image.size[0] / width, image.size[1] / height
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


# ---- RandAugment / 3-Augment (timm's op set and magnitude mapping) ----

FILL = (128, 128, 128)
MAX_LEVEL = 10.0


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR,
                         fillcolor=_fill(img))


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _rand_op(name: str, img: Image.Image, level: float, rng: np.random.Generator) -> Image.Image:
    m = level / MAX_LEVEL
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(_signed(30 * m, rng), resample=Image.BILINEAR, fillcolor=_fill(img))
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, 8 - int(4 * m)))
    if name == "Solarize":
        return ImageOps.solarize(img, int(256 - 256 * m))
    if name == "SolarizeAdd":
        return _solarize_add(img, int(110 * m))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        enhancer = getattr(ImageEnhance, name)(img)
        return enhancer.enhance(1.0 + _signed(0.9 * m, rng))
    if name == "ShearX":
        return _affine(img, (1, _signed(0.3 * m, rng), 0, 0, 1, 0))
    if name == "ShearY":
        return _affine(img, (1, 0, 0, _signed(0.3 * m, rng), 1, 0))
    if name == "TranslateXRel":
        return _affine(img, (1, 0, _signed(0.45 * m, rng) * img.size[0], 0, 1, 0))
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * m, rng) * img.size[1]))
    raise AssertionError(name)


def _fill(img: Image.Image) -> int | tuple[int, ...]:
    return FILL[0] if img.mode == "L" else FILL[: len(img.getbands())]


RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateXRel", "TranslateYRel")
_RAND_SPEC = re.compile(r"^rand(?P<opts>(-[a-z]+[\d.]+)*)$")


@dataclass(frozen=True)
class Policy:
    """A parsed data.auto_augment: RandAugment (num_ops ops, each applied with probability
    `prob`, magnitude ~ N(magnitude, magnitude_std) clipped to [0, 10]) or 3-Augment."""

    kind: str  # rand | 3aug
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    prob: float = 0.5

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        if self.kind == "3aug":
            return three_augment(img, rng)
        for index in rng.choice(len(RAND_OPS), self.num_ops, replace=True).tolist():
            level = self.magnitude
            if self.magnitude_std > 0:
                level = float(np.clip(rng.normal(self.magnitude, self.magnitude_std), 0, MAX_LEVEL))
            if rng.random() < self.prob:
                img = _rand_op(RAND_OPS[index], img, level, rng)
        return img


def parse_policy(spec: str) -> Policy | None:
    """"" -> None; "3aug"; "rand-m9-n2-mstd0.5" (timm's spelling: m magnitude, n ops, mstd
    magnitude noise, p op probability). Bad spellings raise ValueError naming the key."""
    if not spec:
        return None
    if spec == "3aug":
        return Policy("3aug")
    match = _RAND_SPEC.match(spec)
    if not match:
        raise ValueError(f"data.auto_augment={spec!r}: use '', '3aug' or 'rand-m9-n2-mstd0.5'")
    values = {"m": 9.0, "n": 2.0, "mstd": 0.0, "p": 0.5}
    for part in filter(None, match.group("opts").split("-")):
        key = re.match(r"[a-z]+", part).group(0)
        if key not in values:
            raise ValueError(f"data.auto_augment={spec!r}: unknown option {key!r} (m, n, mstd, p)")
        values[key] = float(part[len(key):])
    if not (0 <= values["m"] <= MAX_LEVEL and values["n"] >= 1 and 0 <= values["p"] <= 1):
        raise ValueError(f"data.auto_augment={spec!r}: need 0 <= m <= 10, n >= 1, 0 <= p <= 1")
    return Policy("rand", int(values["n"]), values["m"], values["mstd"], values["p"])


def three_augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """DeiT III: one of grayscale, solarize (threshold 128), gaussian blur (sigma ~ U(0.1, 2))."""
    choice = int(rng.integers(0, 3))
    if choice == 0:
        return ImageOps.grayscale(img).convert(img.mode)
    if choice == 1:
        return ImageOps.solarize(img, 128)
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.1, 2.0))))


def color_jitter(img: Image.Image, strength: float, rng: np.random.Generator,
                 hue: float = 0.0) -> Image.Image:
    """torchvision's ColorJitter: brightness, contrast and saturation factors ~ U(1 - s, 1 + s)
    and, with `hue` > 0, a hue shift ~ U(-hue, hue) of the colour circle, applied in a random
    order. Without hue the draws are those of the 3-op version (same pixels as before hue)."""
    ops = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors, hue_factor, order = jitter_draws(strength, rng, hue)
    for index in order:
        if index == 3:
            img = adjust_hue(img, hue_factor)
        elif strength > 0 and not (ops[index] is ImageEnhance.Color and img.mode == "L"):
            img = ops[index](img).enhance(float(factors[index]))
    return img


def jitter_draws(strength: float, rng: np.random.Generator, hue: float = 0.0
                 ) -> tuple[list[float], float, list[int]]:
    """color_jitter's draws: (brightness, contrast, saturation factors; hue shift; op order,
    3 = hue), apart from the pixels so the device decode replays them."""
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, 3)
    hue_factor = float(rng.uniform(-hue, hue)) if hue > 0 else 0.0
    return factors.tolist(), hue_factor, rng.permutation(4 if hue > 0 else 3).tolist()


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's PIL `adjust_hue`: rotate PIL's 8-bit HSV hue by int(hue_factor * 255)
    steps (wrapping); grayscale images are returned as they are."""
    if img.mode in ("L", "1", "I", "F"):
        return img
    mode = img.mode
    h, s, v = img.convert("HSV").split()
    hue = (np.asarray(h, np.int16) + int(hue_factor * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(hue.astype(np.uint8), "L"), s, v)).convert(mode)


# ---- random erasing (timm's RandomErasing, on the normalised CHW array) ----

ERASE_MODES = ("pixel", "rand", "const")


@dataclass(frozen=True)
class Erasing:
    """timm's RandomErasing: with probability `prob`, 1..`count` boxes (the count uniform),
    each of area ~ U(scale) * area / count and log aspect ~ U(log ratio), 10 tries per box; the
    box becomes per-pixel normal noise (pixel), one normal colour per channel (rand) or 0 (const,
    the dataset mean after normalisation)."""

    prob: float
    scale: tuple[float, float] = (0.02, 1 / 3)
    ratio: tuple[float, float] = (0.3, 1 / 0.3)
    mode: str = "pixel"
    count: int = 1

    def __call__(self, arr: np.ndarray, rng: np.random.Generator) -> list[Box]:
        """Erase boxes of a float [C, H, W] array in place; returns them (left, top, right,
        bottom)."""
        boxes = []
        for (left, top, right, bottom), pixels in self.draw(arr.shape, rng):
            arr[:, top:bottom, left:right] = pixels
            boxes.append((left, top, right, bottom))
        return boxes

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator
             ) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """The boxes and their fill ([C, h, w] or [C, 1, 1]) for an image of `shape`, drawn
        apart from the pixels so the device decode replays them."""
        if rng.random() > self.prob:
            return []
        channels, height, width = shape
        count = 1 if self.count == 1 else int(rng.integers(1, self.count + 1))
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        boxes = []
        for _ in range(count):
            for _ in range(10):
                target = rng.uniform(*self.scale) * height * width / count
                aspect = math.exp(rng.uniform(*log_ratio))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if w < width and h < height:
                    top = int(rng.integers(0, height - h + 1))
                    left = int(rng.integers(0, width - w + 1))
                    pixels = self._pixels((channels, h, w), rng)
                    boxes.append(((left, top, left + w, top + h), pixels))
                    break
        return boxes

    def _pixels(self, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
        if self.mode == "pixel":
            return rng.standard_normal(shape, np.float32)
        if self.mode == "rand":
            return rng.standard_normal((shape[0], 1, 1), np.float32)
        return np.zeros((shape[0], 1, 1), np.float32)


def parse_erasing(prob: float, scale: list[float], ratio: list[float], mode: str,
                  count: int) -> Erasing | None:
    """data.random_erasing (+ erase_*) -> an Erasing, None when off; ValueError naming the key."""
    if not 0 <= prob <= 1:
        raise ValueError(f"data.random_erasing={prob}: a probability in [0, 1]")
    if mode not in ERASE_MODES:
        raise ValueError(f"data.erase_mode={mode!r}: choose one of {ERASE_MODES}")
    if count < 1:
        raise ValueError(f"data.erase_count={count}: need at least 1")
    for name, low_high in (("erase_scale", scale), ("erase_ratio", ratio)):
        if len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]:
            raise ValueError(f"data.{name}={low_high}: need [low, high] with 0 < low <= high")
    if prob == 0:
        return None
    return Erasing(prob, (scale[0], scale[1]), (ratio[0], ratio[1]), mode, count)
