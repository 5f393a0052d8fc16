"""AdamW over parameter groups that carry their own lr / weight-decay multipliers.

Groups come from each parameter's role (model.param_kinds()) through the parametrization
(pretrain/models/parametrization.py). The multipliers live in the optimizer's param_groups, so
they are saved with the optimizer state and survive sharding, resharding and reload.
"""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW, Optimizer

from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import (
    eps_multiplier,
    group_multipliers,
    in_residual_block,
)
from pretrain.optim_config import OptimConfig

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def canonical_name(name: str) -> str:
    """Parameter name without the prefixes that wrappers (AC, compile, DDP) insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def param_groups(
    model: nn.Module, kinds: dict[str, str], optim: OptimConfig, model_cfg: ModelConfig
) -> list[dict]:
    """One group per (lr_mult, wd_mult, eps factor), in a fixed order so every rank builds the
    same list; the multipliers come from each parameter's role (and, under the depth rule,
    whether it sits in a residual block) under `model_cfg`'s parametrization."""
    groups: dict[tuple[float, float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = canonical_name(name)
        in_block = in_residual_block(name)
        lr_mult, wd_mult = group_multipliers(kinds[name], model_cfg, in_block)
        eps_mult = eps_multiplier(model_cfg, in_block)
        groups.setdefault((lr_mult, wd_mult, eps_mult), []).append(p)
    return [
        {
            "params": params,
            "lr": optim.lr * lr_mult,
            "weight_decay": optim.weight_decay * wd_mult,
            "eps": optim.eps * eps_mult,
            "lr_mult": lr_mult,
            "wd_mult": wd_mult,
        }
        for (lr_mult, wd_mult, eps_mult), params in sorted(groups.items())
    ]


def build_optimizer(
    model: nn.Module, kinds: dict[str, str], optim: OptimConfig, model_cfg: ModelConfig
) -> Optimizer:
    groups = param_groups(model, kinds, optim, model_cfg)
    # on_nonfinite=skip needs the fused kernel: it alone can skip an update on device
    fused = optim.fused is True or optim.on_nonfinite == "skip"
    return AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused or None)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Scheduled base lr times each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
