"""The `checkpoint` section: when to save, how many to keep, where to resume from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointConfig:
    every_steps: int = 100  # 0 disables periodic checkpoints
    keep_last: int = 3  # committed checkpoints kept; older ones are deleted
    resume: str = "auto"  # auto (latest complete in run dir) | none | path to a checkpoint
    async_save: bool = False  # overlap writing with training
    save_at_end: bool = True
    # Ranks agree on stop/save requests (signals, RUN/SAVE_NOW), read the divergence guard and
    # commit a finished async save at log steps, save steps and every this many steps: between
    # those, a step costs no blocking collective or host sync. A signal is honoured within it.
    agree_every_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("every_steps", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"checkpoint.{name} must be >= 0, got {getattr(self, name)}")
