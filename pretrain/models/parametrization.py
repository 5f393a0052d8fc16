"""Initialisation and per-parameter-group multipliers: the seam where muP plugs in.

Each model tags its parameters with a role (`model.param_kinds()`):
embedding (input weights), hidden (matrix-like weights between width-sized layers), readout
(the output layer), vector (norm gains, biases). The standard parametrization (SP) below inits
matrices with N(0, init_std^2), vectors as their modules define them, and gives every group
lr multiplier 1; weight decay applies to hidden and readout matrices only.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.models.config import ModelConfig

DECAYED_KINDS = ("hidden", "readout")


@torch.no_grad()
def init_parameters(model: nn.Module, cfg: ModelConfig) -> None:
    kinds = model.param_kinds()
    for name, p in model.named_parameters():
        kind = kinds[name]
        if kind in ("embedding", "hidden", "readout") and (p.ndim >= 2):
            nn.init.trunc_normal_(p, std=cfg.init_std, a=-2 * cfg.init_std, b=2 * cfg.init_std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        # norm gains keep their module's init (ones)


def group_multipliers(kind: str, cfg: ModelConfig) -> tuple[float, float]:
    """(lr multiplier, weight-decay multiplier) for a parameter role."""
    return 1.0, (1.0 if kind in DECAYED_KINDS else 0.0)
