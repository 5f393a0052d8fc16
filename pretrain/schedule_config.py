"""The `schedule` section: learning-rate schedule and run length (see pretrain/schedule.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "wsd", "constant"] = "cosine"
    steps: int = 1000  # optimizer steps in the whole run
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine / wsd floor as a fraction of optim.lr
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying at the end

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"schedule.steps must be > 0, got {self.steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name in ("min_lr_ratio", "decay_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"schedule.{name} must be in [0, 1], got {getattr(self, name)}")
