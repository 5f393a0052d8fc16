"""Samplers with classifier-free guidance (Ho & Salimans 2022).

The model is called as model(x, time, labels); `null_label` is the class the model was trained
to read as "unconditional". Guided prediction: uncond + w * (cond - uncond); w = 1 is purely
conditional (one forward), w = 0 purely unconditional.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.diffusion.ddpm import DDPMSchedule
from pretrain.diffusion.flow import TIME_SCALE
from pretrain.diffusion.learned_variance import GaussianChain


def guided(
    model: nn.Module,
    x: torch.Tensor,
    time: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    null_label: int,
) -> torch.Tensor:
    if scale == 1.0:
        return model(x, time, labels).float()
    null = torch.full_like(labels, null_label)
    out = model(torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, null])).float()
    cond, uncond = out.chunk(2)
    return uncond + scale * (cond - uncond)


@torch.no_grad()
def euler_flow(
    model: nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    scale: float,
    null_label: int,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) with `steps` Euler steps.
    One step gives the closed form x0 = noise - v(noise, 1)."""
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x = noise.float()
    for i in range(steps):
        time = torch.full((x.shape[0],), float(ts[i]) * TIME_SCALE, device=x.device)
        v = guided(model, x, time, labels, scale, null_label)
        x = x - float(ts[i] - ts[i + 1]) * v
    return x


@torch.no_grad()
def ddim(
    model: nn.Module,
    schedule: DDPMSchedule,
    noise: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    scale: float,
    null_label: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) over `steps` evenly spaced timesteps from T-1 down to 0.

    eta = 0: deterministic DDIM; eta = 1: ancestral DDPM sampling on the respaced chain. With one
    step the result is the closed form x0 = (x_T - sqrt(1 - abar_T) eps) / sqrt(abar_T).
    """
    timesteps = respaced_timesteps(schedule, steps)
    abar_all = schedule.alphas_cumprod
    x = noise.float()
    for i, t in enumerate(timesteps):
        time = torch.full((x.shape[0],), float(t), device=x.device)
        eps = guided(model, x, time, labels, scale, null_label)
        a_t = float(abar_all[t])
        a_prev = float(abar_all[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
            x = x + sigma * z
    return x


def guided_with_variance(
    model: nn.Module,
    x: torch.Tensor,
    time: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    null_label: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A learned-variance model's (guided noise, variance values v): guidance applies to the
    noise channels; v comes from the conditional branch."""
    c = x.shape[1]
    if scale == 1.0:
        out = model(x, time, labels).float()
        return out[:, :c], out[:, c:]
    null = torch.full_like(labels, null_label)
    out = model(torch.cat([x, x]), torch.cat([time, time]), torch.cat([labels, null])).float()
    cond, uncond = out.chunk(2)
    return uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c]), cond[:, c:]


def respaced_timesteps(schedule: DDPMSchedule, steps: int) -> list[int]:
    """`steps` evenly spaced timesteps from T-1 down to 0 (the DDIM / respaced DDPM chain)."""
    return torch.linspace(schedule.steps - 1, 0, steps).round().long().tolist()


@torch.no_grad()
def ddpm_learned_variance(
    model: nn.Module,
    schedule: DDPMSchedule,
    noise: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    scale: float,
    null_label: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling on the respaced chain of `steps` timesteps, each step drawn from
    N(posterior mean at the predicted x0, the model's learned variance) (Improved DDPM; DiT's
    FID samples: 250 steps). The variance interpolates the respaced chain's beta~ and beta, so
    a model that outputs v = -1 everywhere samples as `ddim(eta=1)` does."""
    timesteps = respaced_timesteps(schedule, steps)
    chain = GaussianChain(schedule.alphas_cumprod[timesteps[::-1]])
    x = noise.float()
    for i, t in enumerate(timesteps):
        time = torch.full((x.shape[0],), float(t), device=x.device)
        eps, v = guided_with_variance(model, x, time, labels, scale, null_label)
        k = torch.full((x.shape[0],), len(timesteps) - 1 - i, device=x.device)
        mean, log_var = chain.p_step(x, k, eps, v)
        x = mean
        if i + 1 < len(timesteps):  # the last step returns the mean
            z = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
            x = x + (0.5 * log_var).exp() * z
    return x
