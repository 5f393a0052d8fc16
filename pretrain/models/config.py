"""Typed model settings (`model.*`): shared block options plus one section per family."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrain.models.mup_config import MupConfig


@dataclass
class ViTConfig:
    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 1
    num_classes: int = 10
    pooling: Literal["cls", "mean"] = "cls"


@dataclass
class ModelConfig:
    family: str = "vit"  # a key of pretrain.models.MODEL_REGISTRY
    width: int = 64  # residual stream width d_model
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    qk_norm: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    vit: ViTConfig = field(default_factory=ViTConfig)
    mup: MupConfig = field(default_factory=MupConfig)
