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


def pil_taps(in_size: int, low: float, high: float, out_size: int
             ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """PIL's fixed-point bilinear taps resampling source pixels [low, high) to out_size pixels,
    as the nonzero entries of the [out_size, span] matrix: (first source pixel used, span,
    output index, source index - first, integer coefficient as float64).

    Each output pixel's taps are computed over its own window only (a few pixels, as
    Resample.c does): the same values as over the whole span (the taps outside a window are
    zeros, and adding zeros changes no sum) at a fraction of the host's work, and only these
    entries travel to the device (`resize_boxes`), not the mostly-zero matrix."""
    low, high = float(np.float32(low)), float(np.float32(high))  # PIL's box is float32
    scale = float(np.float32(high - low)) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    centers = low + (np.arange(out_size) + 0.5) * scale
    xmin = np.clip((centers - support + 0.5).astype(np.int64), 0, None)  # C casts truncate
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    first, last = int(xmin.min()), int(xmax.max())
    window = max(int((xmax - xmin).max()), 1)
    taps = xmin[:, None] + np.arange(window)[None, :]
    inside = taps < xmax[:, None]
    w = 1.0 - np.abs((taps - centers[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(inside & (w > 0), w, 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as Resample.c does
    w = np.divide(w, total, out=w, where=total != 0)
    fixed = np.where(w > 0, np.trunc(0.5 + w * UNIT), 0.0)  # (int)(0.5 + k * 2**22), k >= 0
    keep = inside & (fixed > 0)
    out_index = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)[keep]
    return first, last - first, out_index, taps[keep] - first, fixed[keep]


def _pass(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One PIL pass over the last dim: sum(pixel * coefficient) + half, >> 22, clip to uint8.
    `weights` [..., out, span] (batched: one matrix per image)."""
    out = torch.matmul(values, weights.transpose(-1, -2)) + ROUND
    return torch.floor(out / UNIT).clamp_(0, 255)


def resize_box(image: torch.Tensor, box: tuple[float, float, float, float], size: int
               ) -> torch.Tensor:
    """`Image.resize((size, size), BILINEAR, box=box)` of a [C, H, W] image (uint8 values, any
    dtype) -> float32 [C, size, size] integer values, bitwise PIL's (`resize_boxes` of one)."""
    return resize_boxes([image], [box], size)[0]


def resize_boxes(images: list[torch.Tensor], boxes: list[tuple[float, float, float, float]],
                 size: int, chunk_bytes: int = 256 << 20) -> torch.Tensor:
    """`resize_box` of many [C, H, W] images (same C) -> float32 [N, C, size, size], bitwise
    equal, in a few batched products instead of a few small ones per image (the per-image
    loop was 90% of the device decode's time on an H200). Each image's taps are padded with
    zero coefficients to the widest span of its chunk (a zero tap adds an exact 0), and a
    chunk holds at most `chunk_bytes` of float64 crops, so large photos do not multiply the
    batch's memory by its size."""
    if not images:
        raise ValueError("resize_boxes needs at least one image")
    device, channels = images[0].device, images[0].shape[0]
    plans = []  # (rows' taps, columns' taps) per image
    for image, (left, top, right, bottom) in zip(images, boxes):
        _, height, width = image.shape
        plans.append((pil_taps(height, top, bottom, size), pil_taps(width, left, right, size)))
    # smallest spans first: a chunk pads to its widest crop, so like sizes go together
    order = sorted(range(len(images)), key=lambda i: plans[i][0][1] * plans[i][1][1])
    out = torch.empty((len(images), channels, size, size), dtype=torch.float32, device=device)
    start = 0
    while start < len(order):
        end, span_h, span_w = start + 1, plans[order[start]][0][1], plans[order[start]][1][1]
        while end < len(order):
            h, w = max(span_h, plans[order[end]][0][1]), max(span_w, plans[order[end]][1][1])
            if (end + 1 - start) * channels * h * w * 8 > chunk_bytes:
                break
            end, span_h, span_w = end + 1, h, w
        chunk = order[start:end]
        crops = torch.zeros((len(chunk), channels, span_h, span_w), dtype=torch.float64,
                            device=device)
        for i, j in enumerate(chunk):
            (row0, h, *_), (col0, w, *_) = plans[j]
            crops[i, :, :h, :w] = images[j][:, row0:row0 + h, col0:col0 + w]
        cols = _dense([plans[j][1] for j in chunk], size, span_w, device)
        rows = _dense([plans[j][0] for j in chunk], size, span_h, device)
        x = _pass(crops, cols[:, None])  # [n, C, span_h, size]
        x = _pass(x.transpose(-1, -2), rows[:, None]).transpose(-1, -2)
        out[torch.tensor(chunk, device=device)] = x.to(torch.float32)
        start = end
    return out


def _dense(taps: list[tuple], size: int, span: int, device: torch.device) -> torch.Tensor:
    """float64 [N, size, span] tap matrices built on `device` from their nonzero entries."""
    which = np.concatenate([np.full(len(t[2]), i) for i, t in enumerate(taps)])
    index = [torch.from_numpy(np.concatenate(a)).to(device)
             for a in ([which], [t[2] for t in taps], [t[3] for t in taps])]
    values = torch.from_numpy(np.concatenate([t[4] for t in taps])).to(device)
    dense = torch.zeros((len(taps), size, span), dtype=torch.float64, device=device)
    dense[tuple(index)] = values
    return dense


def to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L of integer-valued [..., 3, H, W] -> [..., 1, H, W]: (19595 R + 38470 G +
    7471 B + 0x8000) >> 16, exact in float64."""
    r, g, b = rgb.to(torch.float64).unbind(-3)
    luma = torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)
    return luma.to(rgb.dtype).unsqueeze(-3)


def blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float | torch.Tensor
          ) -> torch.Tensor:
    """`Image.blend(degenerate, image, factor)` (ImageEnhance): float32 in1 + a * (in2 - in1),
    clipped and truncated to uint8. `factor`: a number, or float32 per image [N, 1, 1, 1]."""
    alpha = torch.as_tensor(factor, dtype=torch.float32, device=image.device)
    out = degenerate + alpha * (image - degenerate)
    return torch.floor(out.clamp_(0, 255))


def enhance(image: torch.Tensor, op: int, factor: float | torch.Tensor) -> torch.Tensor:
    """ImageEnhance op 0 Brightness, 1 Contrast, 2 Color (saturation) of integer-valued
    [C, H, W] or [N, C, H, W] images (C 1 or 3), as `augment.color_jitter` applies them."""
    luma = image if image.shape[-3] == 1 else None
    if op == 0:
        return blend(torch.zeros_like(image), image, factor)
    if luma is None:
        luma = to_luma(image)
    if op == 1:  # int(mean + 0.5) of each L image, on the device (no host sync per image)
        total = luma.to(torch.float64).sum(dim=(-3, -2, -1), keepdim=True)  # integers: exact
        pixels = luma.shape[-3] * luma.shape[-2] * luma.shape[-1]
        mean = torch.floor(total / pixels + 0.5)
        return blend(torch.zeros_like(image) + mean.to(image.dtype), image, factor)
    return blend(luma.expand_as(image), image, factor)


def color_jitter(image: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """`augment.color_jitter` of one [C, H, W] image with its draws given (factors of
    brightness, contrast, saturation; the order of the ops): `color_jitter_batch` of one."""
    factors_t = torch.tensor([factors], device=image.device)
    return color_jitter_batch(image[None], factors_t, [order])[0]


def color_jitter_batch(images: torch.Tensor, factors: torch.Tensor, orders: list[list[int]]
                       ) -> torch.Tensor:
    """`color_jitter` of each image of [N, C, H, W] with its own factors (float32 [N, 3]) and
    op order (-1: none), bitwise: at each position of the order, every image whose op there
    is the same goes through that op together."""
    images = images.clone()
    for position in range(3):
        for op in (0, 1, 2):
            if op == 2 and images.shape[1] == 1:
                continue
            picked = [j for j, order in enumerate(orders)
                      if len(order) > position and order[0] >= 0 and order[position] == op]
            if not picked:
                continue
            index = torch.tensor(picked, device=images.device)
            factor = factors[index, op].to(torch.float32).view(-1, 1, 1, 1)
            images[index] = enhance(images[index], op, factor)
    return images
