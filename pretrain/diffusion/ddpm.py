"""DDPM noise schedules and the forward process (Ho et al. 2020; Nichol & Dhariwal 2021).

x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for integer t in [0, T); the network predicts eps.
"""

from __future__ import annotations

import math

import torch


def make_betas(schedule: str, steps: int) -> torch.Tensor:
    """float64 betas: "linear" (1e-4 -> 0.02 at T=1000, rescaled to T) or "cosine"."""
    if schedule == "linear":
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        grid = torch.arange(steps + 1, dtype=torch.float64) / steps
        abar = torch.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown DDPM schedule {schedule!r} (linear | cosine)")


class DDPMSchedule:
    """Cumulative products of one schedule; indexed by integer timesteps."""

    def __init__(self, schedule: str, steps: int):
        self.steps = steps
        self.betas = make_betas(schedule, steps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t broadcast against `like` ([B, ...]), in its dtype and device."""
        a = self.alphas_cumprod.to(like.device)[t.long()]
        return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), generator=generator, device=device)
