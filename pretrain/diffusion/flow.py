"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022; Esser et al. 2024).

Convention: t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t * noise, and the network
predicts the constant velocity dx_t/dt = noise - x0. The network sees the time as
TIME_SCALE * t so that its sinusoidal embedding spans the same range as DDPM step indices.
"""

from __future__ import annotations

import torch

TIME_SCALE = 1000.0


def time_from_uniform(
    u: torch.Tensor, sampling: str, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """Training times in (0, 1) from uniform draws u: "uniform" keeps them; "logit_normal"
    maps them to sigmoid(N(mean, std)) (Esser et al. 2024), which favours intermediate noise."""
    if sampling == "uniform":
        return u
    if sampling == "logit_normal":
        return torch.sigmoid(mean + std * torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)))
    raise ValueError(f"unknown timestep sampling {sampling!r} (uniform | logit_normal)")


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The point x_t on the straight path from data x0 (t=0) to noise (t=1)."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0
