"""Typed muP settings (`model.mup.*`); the rules that use them are in parametrization.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MupConfig:
    """muP seam: the parametrization reads these (rules in pretrain/models/parametrization.py)."""

    enabled: bool = False
    base_width: int = 64  # width at which muP and standard parametrization coincide
