"""The `optim` section: AdamW hyperparameters, clipping and accumulation (see pretrain/optim.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class OptimConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.05  # applied to matrix-like parameters only
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    grad_accum: int = 1  # micro-batches per optimizer step
    fused: bool | Literal["auto"] = "auto"  # fused AdamW kernel (auto: on a GPU)
    # Divergence guard: a non-finite loss or grad norm at a step either fails the run (nothing
    # checkpointed after it, status failed naming the step) or skips that update (fused AdamW
    # skips it on device) and counts it; more than max_consecutive_skips in a row fails.
    on_nonfinite: Literal["fail", "skip"] = "fail"
    max_consecutive_skips: int = 10
    # Exponential moving average of the trained weights, updated after every optimizer step
    # (ema <- decay * ema + (1 - decay) * w, fp32, sharded like the weights) and checkpointed;
    # evaluation and samples use it, `ckpt export --ema` exports it. DiT: 0.9999. 0: off
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lr", "eps", "grad_accum", "max_consecutive_skips"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"optim.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.on_nonfinite == "skip" and self.fused is False:
            raise ValueError("optim.on_nonfinite=skip needs the fused AdamW kernel (it skips the "
                             "update on device): drop optim.fused=false or use on_nonfinite=fail")
