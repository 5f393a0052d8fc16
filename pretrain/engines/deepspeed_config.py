"""Typed DeepSpeed settings (`parallel.deepspeed.*`), used when parallel.backend=deepspeed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2  # ZeRO stage 1, 2 or 3
