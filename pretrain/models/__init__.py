"""Model registry: each family is (builder, loss, tokens per sample, eval hooks).

Families: vit (classifier), dit (class-conditional diffusion transformer), lm (decoder-only
language model). Add families with `register_family`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pretrain.models.attention_stats import attention_entropy
from pretrain.models.blocks import unwrap
from pretrain.models.config import ModelConfig
from pretrain.models.dit import DiT, dit_eval_extras, dit_loss
from pretrain.models.lm import DecoderLM, lm_batch_cost, lm_loss
from pretrain.models.materialize import InitPlan
from pretrain.models.parametrization import set_forward_multipliers
from pretrain.models.vit import ViT, vit_loss

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]
# (model, first validation batch, step, output dir on rank 0 else None) -> extra eval results:
# floats are logged as val/<key>; uint8 tensors [3,H,W] under "image/<name>" go to TensorBoard.
EvalExtrasFn = Callable[[nn.Module, dict, int, "Path | None"], dict]


@dataclass(frozen=True)
class ModelFamily:
    build: Callable[[ModelConfig], nn.Module]
    loss: LossFn  # (model, batch) -> (mean loss, {"loss_sum", "count", ...} sums for eval)
    tokens_per_sample: Callable[[nn.Module], int]  # as configured (model_stats.json)
    eval_extras: EvalExtrasFn | None = None  # runs on every rank (sharded forwards need all)
    # reduced validation metrics ({"loss", ...}) -> derived ones, e.g. perplexity
    eval_summary: Callable[[dict[str, float]], dict[str, float]] | None = None
    # (model, {key: shape} of one batch) -> (tokens, training FLOPs) of that batch as shaped;
    # None: batch size x the configured per-sample figures
    batch_cost: Callable[[nn.Module, dict], tuple[int, int]] | None = None

    def cost_of(self, model: nn.Module, shapes: dict) -> tuple[int, int]:
        """(tokens, training FLOPs) of a batch with these tensor shapes, for tokens/s and MFU."""
        if self.batch_cost is not None:
            return self.batch_cost(model, shapes)
        n = next(iter(shapes.values()))[0]
        return n * self.tokens_per_sample(model), n * model.flops_per_sample()


def with_eval_extras(loss: LossFn, samples: EvalExtrasFn | None = None) -> EvalExtrasFn:
    """Eval hook: attention entropy per layer when model.attn_entropy, plus the family's own."""

    def extras(model: nn.Module, batch: dict, step: int, out_dir: Path | None) -> dict:
        out = {}
        if unwrap(model).cfg.attn_entropy:
            out |= attention_entropy(model, lambda: loss(model, batch))
        if samples is not None:
            out |= samples(model, batch, step, out_dir)
        return out

    return extras


def perplexity(results: dict[str, float]) -> dict[str, float]:
    return {"perplexity": math.exp(min(results["loss"], 700.0))}


MODEL_REGISTRY: dict[str, ModelFamily] = {}


def register_family(name: str, family: ModelFamily) -> None:
    MODEL_REGISTRY[name] = family


register_family(
    "vit",
    ModelFamily(
        build=ViT,
        loss=vit_loss,
        tokens_per_sample=lambda m: m.num_tokens,
        eval_extras=with_eval_extras(vit_loss),
    ),
)
register_family(
    "dit",
    ModelFamily(
        build=DiT,
        loss=dit_loss,
        tokens_per_sample=lambda m: m.num_patches,
        eval_extras=with_eval_extras(dit_loss, dit_eval_extras),
    ),
)
register_family(
    "lm",
    ModelFamily(
        build=DecoderLM,
        loss=lm_loss,
        tokens_per_sample=lambda m: m.seq_len,
        eval_extras=with_eval_extras(lm_loss),
        eval_summary=perplexity,
        batch_cost=lm_batch_cost,
    ),
)


def get_family(name: str) -> ModelFamily:
    if name not in MODEL_REGISTRY:
        raise ValueError(
            f"model.family={name!r} is not registered (known: {', '.join(sorted(MODEL_REGISTRY))})"
        )
    return MODEL_REGISTRY[name]


@torch.no_grad()
def build_model(cfg: ModelConfig, seed: int | None = None, meta: bool = False) -> nn.Module:
    """Build the family's module and initialise it through the parametrization (SP or muP).

    Initial values are a pure function of (`seed`, parameter name) (pretrain/models/
    materialize.py); `seed` defaults to one draw from the global RNG, so `torch.manual_seed`
    before the call keeps deciding them. The seed is kept as `model.init_seed`.
    `meta=True` allocates nothing: the engine applies parallelism, then allocates each rank's
    shards and writes the same values an eager build has (`InitPlan`).
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    family = get_family(cfg.family)
    if meta:
        with torch.device("meta"):
            model = family.build(cfg)
    else:
        model = family.build(cfg)
    set_forward_multipliers(model, cfg)
    model.init_seed = seed
    if not meta:
        InitPlan(model).apply(model)
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
