"""AdamW over parameter groups that carry their own lr / weight-decay multipliers.

Groups come from each parameter's role (model.param_kinds()) through the parametrization
(pretrain/models/parametrization.py). The multipliers live in the optimizer's param_groups, so
they are saved with the optimizer state and survive sharding, resharding and reload.
"""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW, Optimizer

from pretrain.config import TrainConfig
from pretrain.models.parametrization import group_multipliers

_WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def canonical_name(name: str) -> str:
    """Parameter name without the prefixes that wrappers (AC, compile, DDP) insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def param_groups(model: nn.Module, kinds: dict[str, str], cfg: TrainConfig) -> list[dict]:
    """One group per (lr_mult, wd_mult), in a fixed order so every rank builds the same list."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult, wd_mult = group_multipliers(kinds[canonical_name(name)], cfg.model)
        groups.setdefault((lr_mult, wd_mult), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.optim.lr * lr_mult,
            "weight_decay": cfg.optim.weight_decay * wd_mult,
            "lr_mult": lr_mult,
            "wd_mult": wd_mult,
        }
        for (lr_mult, wd_mult), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, kinds: dict[str, str], cfg: TrainConfig) -> Optimizer:
    o = cfg.optim
    return AdamW(param_groups(model, kinds, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Scheduled base lr times each group's multiplier."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
