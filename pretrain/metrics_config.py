"""The `logging` section: how often to log and evaluate, and where (see pretrain/metrics.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class WandbConfig:
    """Weights & Biases sink (pretrain/metrics_wandb.py; `pip install '.[wandb]'`), off while
    `project` is empty. offline writes RUN/wandb/ for a later `wandb sync`."""

    project: str = ""
    entity: str = ""
    mode: Literal["online", "offline", "disabled"] = "online"
    init_timeout_s: float = 60.0  # online: give up on the service after this, log offline


@dataclass
class LoggingConfig:
    every_steps: int = 10
    eval_every_steps: int = 100  # 0 disables periodic evaluation
    eval_batches: int = 0  # 0 = the whole validation split
    tensorboard: bool = True
    progress_bar: bool = True
    peak_tflops: float = 0.0  # per device, for MFU; 0 = look up the device and dtype, else no MFU
    # CUDA: torch.cuda.set_sync_debug_mode("warn") between agreement points, so any host sync
    # in a steady-state step prints a warning (bench/gpu_check.sh turns it on)
    sync_debug: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.every_steps <= 0:
            raise ValueError(f"logging.every_steps must be > 0, got {self.every_steps}")
        for name in ("eval_every_steps", "eval_batches", "peak_tflops"):
            if getattr(self, name) < 0:
                raise ValueError(f"logging.{name} must be >= 0, got {getattr(self, name)}")
