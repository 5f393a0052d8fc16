"""The image ops after decode, in torch, equal to the PIL path of `transforms.ImageRows`.

Used by the device decode (`device_decode.py`): a batch's JPEGs are decoded on the GPU, then
these ops run on the decoded uint8 tensors there; the tests run them on the CPU on PIL-decoded
tensors and compare with the PIL path. Each op replays PIL's integer arithmetic rather than
approximating it, so the result is bitwise PIL's for the same decoded pixels:
- resize: PIL's separable antialiased bilinear filter (Resample.c: support scaled by the
  reduction, taps normalised, 22-bit fixed-point coefficients, uint8 rounding after each pass),
  as two float64 matrix products over the box's span (every product and sum is an integer below
  2**53, so float64 holds it exactly). Each pass is bitwise PIL's; ours runs horizontal first
  (Pillow's C source as of 2026-08); Pillow 13 runs some crops vertical first (a rule newer
  than that source; the April 2026 pull request's rule matches it less well), and there a
  pixel differs by at most one level: 99.98% equal on 224 px random-resized-crops of ~500x375
  images. torch's `interpolate(antialias=True)` is further off: up to 5 levels, 80% equal.
- RGB -> L: PIL's ITU-R 601-2 integer weights (19595, 38470, 7471) >> 16.
- colour jitter: ImageEnhance's `Image.blend` in float32, truncated to uint8 (Blend.c).
Pixels stay integer-valued float32 until the normalisation.
"""

from __future__ import annotations

import numpy as np
import torch

PRECISION_BITS = 22  # PIL: 32 - 8 bits of pixel - 2 bits of headroom
ROUND = float(1 << (PRECISION_BITS - 1))
UNIT = float(1 << PRECISION_BITS)


def pil_weights(in_size: int, low: float, high: float, out_size: int
                ) -> tuple[int, torch.Tensor]:
    """PIL's fixed-point bilinear taps resampling source pixels [low, high) to out_size pixels:
    (the first source pixel used, float64 [out_size, span] integer coefficients)."""
    low, high = float(np.float32(low)), float(np.float32(high))  # PIL's box is float32
    scale = float(np.float32(high - low)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    centers = low + (np.arange(out_size) + 0.5) * scale
    xmin = np.clip((centers - support + 0.5).astype(np.int64), 0, None)  # C casts truncate
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    first, last = int(xmin.min()), int(xmax.max())
    taps = np.arange(first, last)[None, :]
    w = 1.0 - np.abs((taps - centers[:, None] + 0.5) * (1.0 / filterscale))
    inside = (taps >= xmin[:, None]) & (taps < xmax[:, None])
    w = np.where(inside & (w > 0), w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as Resample.c does
    w = np.divide(w, total, out=w, where=total != 0)
    fixed = np.trunc(0.5 + w * UNIT)  # coefficients are >= 0: (int)(0.5 + k * 2**22)
    return first, torch.from_numpy(np.where(w > 0, fixed, 0.0))


def _pass(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One PIL pass over the last dim: sum(pixel * coefficient) + half, >> 22, clip to uint8."""
    out = torch.matmul(values, weights.T) + ROUND
    return torch.floor(out / UNIT).clamp_(0, 255)


def resize_box(image: torch.Tensor, box: tuple[float, float, float, float], size: int
               ) -> torch.Tensor:
    """`Image.resize((size, size), BILINEAR, box=box)` of a [C, H, W] image (uint8 values, any
    dtype) -> float32 [C, size, size] integer values, bitwise PIL's."""
    channels, height, width = image.shape
    left, top, right, bottom = box
    if (height, width) == (size, size) and tuple(box) == (0, 0, width, height):
        return image.to(torch.float32)
    row0, rows = pil_weights(height, top, bottom, size)
    need_h = size != width or left != 0 or right != width
    need_v = size != height or top != 0 or bottom != height
    x = image[:, row0:row0 + rows.shape[1]]  # only the span the taps reach, then float64
    if need_h:
        col0, cols = pil_weights(width, left, right, size)
        x = _pass(x[:, :, col0:col0 + cols.shape[1]].to(torch.float64), cols.to(x.device))
    else:
        x = x.to(torch.float64)
    if need_v:
        x = _pass(x.transpose(1, 2), rows.to(x.device)).transpose(1, 2)
    return x.to(torch.float32).contiguous()


def to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L of integer-valued [3, H, W] -> [1, H, W]: (19595 R + 38470 G + 7471 B +
    0x8000) >> 16, exact in float64."""
    r, g, b = rgb.to(torch.float64)
    luma = torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)
    return luma.to(rgb.dtype)[None]


def blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """`Image.blend(degenerate, image, factor)` (ImageEnhance): float32 in1 + a * (in2 - in1),
    clipped and truncated to uint8."""
    alpha = torch.tensor(factor, dtype=torch.float32, device=image.device)
    out = degenerate + alpha * (image - degenerate)
    return torch.floor(out.clamp_(0, 255))


def enhance(image: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """ImageEnhance op 0 Brightness, 1 Contrast, 2 Color (saturation) of an integer-valued
    [C, H, W] image (C 1 or 3), as `augment.color_jitter` applies them."""
    luma = image if image.shape[0] == 1 else None
    if op == 0:
        return blend(torch.zeros_like(image), image, factor)
    if luma is None:
        luma = to_luma(image)
    if op == 1:  # int(mean + 0.5) of the L image, on the device (no host sync per image)
        mean = torch.floor(luma.to(torch.float64).sum() / luma.numel() + 0.5)
        return blend(torch.zeros_like(image) + mean.to(image.dtype), image, factor)
    return blend(luma.expand_as(image), image, factor)


def color_jitter(image: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """`augment.color_jitter` with its draws given (factors of brightness, contrast,
    saturation; the order of the ops); saturation is skipped on a one-channel image."""
    for index in order:
        if index == 2 and image.shape[0] == 1:
            continue
        image = enhance(image, index, factors[index])
    return image
