"""Sample grids: images in [-1, 1] -> one uint8 [3, H, W] picture (TensorBoard) and a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def make_grid(images: torch.Tensor, rows: int, upscale: int = 4, pad: int = 1) -> torch.Tensor:
    """[N, C, h, w] in [-1, 1] (C = 1 or 3; latents take their first 3 channels) -> uint8
    [3, H, W]: `rows` rows, nearest-neighbour upscaled for viewing, separated by `pad` pixels."""
    x = images.detach().float().cpu().clamp(-1, 1)
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]
    x = x.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    n, _, h, w = x.shape
    cols = -(-n // rows)
    canvas = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[:, top:top + h, left:left + w] = x[i]
    return ((canvas + 1) * 127.5).round().to(torch.uint8)


def save_png(grid: torch.Tensor, path: Path) -> None:
    """Write a uint8 [3, H, W] grid, atomically (written aside, then renamed)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy())).save(tmp)
    tmp.replace(path)
