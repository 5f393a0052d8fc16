"""Learning-rate schedules as pure functions of the step (so resuming needs only the step)."""

from __future__ import annotations

import math

from pretrain.schedule_config import ScheduleConfig


def lr_at(step: int, base_lr: float, cfg: ScheduleConfig) -> float:
    """LR for optimizer step `step` (0-based). Linear warmup, then:

    cosine: half-cosine from base_lr to min_lr_ratio*base_lr at the last step;
    wsd: constant, then linear decay to min_lr_ratio*base_lr over the last decay_fraction of steps
         (warmup-stable-decay, Hu et al. 2024);
    constant: base_lr.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    floor = base_lr * cfg.min_lr_ratio
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "cosine":
        span = max(cfg.steps - cfg.warmup_steps - 1, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "wsd":
        decay_steps = max(int(round(cfg.steps * cfg.decay_fraction)), 1)
        decay_start = cfg.steps - decay_steps
        if step < decay_start:
            return base_lr
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return base_lr + (floor - base_lr) * progress
    raise ValueError(f"schedule.name={cfg.name!r} is not one of cosine, wsd, constant")
