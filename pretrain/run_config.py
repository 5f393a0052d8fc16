"""The `run` section: the run's name, directory (see pretrain/run_dir.py), seed and device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RunConfig:
    name: str = "run"
    dir: str = ""  # run directory; empty = runs/<name>
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    collective_timeout_s: float = 600.0  # a collective waiting longer fails naming rank, op, step
