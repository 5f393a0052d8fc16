"""The `checkpoint` section: when to save, how many to keep, where to resume from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CheckpointConfig:
    every_steps: int = 100  # 0 disables periodic checkpoints
    keep_last: int = 3  # committed checkpoints kept; older ones are deleted
    resume: str = "auto"  # auto (latest complete in run dir) | none | path to a checkpoint
    # With resume=auto, where a run with no checkpoint of its own starts: a decay branch starts
    # from its stable run's checkpoint, yet once requeued resumes from its own newest one.
    resume_fallback: str = ""
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
        if self.resume_fallback and self.resume != "auto":
            raise ValueError(f"checkpoint.resume_fallback needs checkpoint.resume=auto, "
                             f"got checkpoint.resume={self.resume}")
