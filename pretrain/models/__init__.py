"""Model registry: each family is (builder, loss function). Add families with `register_family`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import init_parameters
from pretrain.models.vit import ViT, vit_loss

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
# (model, first validation batch, step, output dir on rank 0 else None) -> extra eval results:
# floats are logged as val/<key>; uint8 tensors [3,H,W] under "image/<name>" go to TensorBoard.
EvalExtrasFn = Callable[[nn.Module, dict, int, "Path | None"], dict]


@dataclass(frozen=True)
class ModelFamily:
    build: Callable[[ModelConfig], nn.Module]
    loss: LossFn  # (model, batch) -> (mean loss, {"loss_sum", "count", ...} sums for eval)
    tokens_per_sample: Callable[[nn.Module], int]  # for tokens/s and FLOPs accounting
    eval_extras: EvalExtrasFn | None = None  # runs on every rank (sharded forwards need all)


MODEL_REGISTRY: dict[str, ModelFamily] = {}


def register_family(name: str, family: ModelFamily) -> None:
    MODEL_REGISTRY[name] = family


register_family("vit", ModelFamily(build=ViT, loss=vit_loss, tokens_per_sample=lambda m: m.num_tokens))


def get_family(name: str) -> ModelFamily:
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model.family={name!r} is not registered (known: {', '.join(sorted(MODEL_REGISTRY))})")
    return MODEL_REGISTRY[name]


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the family's module and initialise it through the parametrization (SP or muP)."""
    model = get_family(cfg.family).build(cfg)
    init_parameters(model, cfg)
    return model


def count_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    skip = model.embedding_param_names() if exclude_embeddings else set()
    return sum(p.numel() for n, p in model.named_parameters() if n not in skip)


def model_stats(cfg: ModelConfig) -> dict:
    """Parameter counts and training FLOPs per sample, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = get_family(cfg.family).build(cfg)
    return {
        "params": count_params(model),
        "params_non_embedding": count_params(model, exclude_embeddings=True),
        "flops_per_sample": model.flops_per_sample(),
        "tokens_per_sample": get_family(cfg.family).tokens_per_sample(model),
        "flops_note": " ".join((model.flops_per_sample.__doc__ or "").split()),
    }
