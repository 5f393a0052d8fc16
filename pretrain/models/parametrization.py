"""Initialisation, forward multipliers and per-group lr/wd multipliers: SP or muP, from roles.

Each model tags its parameters with a role (`model.param_kinds()`): embedding (input weights,
fan-in fixed), hidden (matrix-like: both dimensions grow with width), readout (the output
layer), vector (norm gains, biases). Everything below is a pure function of the parameter's
role, its shape and the config (init values also of the run seed and the parameter's name:
`initial_value`), so it lives in ordinary places that every backend keeps: init values,
written by pretrain/models/materialize.py, two module attributes (`output_mult`, each
attention module's `scale`) and the optimizer's param groups (`lr_mult`, `wd_mult`, saved with
the optimizer state). There is no wrapper and no shape bookkeeping that FSDP2 flattening or a
checkpoint could lose.

muP for Adam-family optimizers, with width_mult m = model.width / model.mup.base_width:

| role      | init std                   | lr  | wd (λ) | forward                        |
|-----------|----------------------------|-----|--------|--------------------------------|
| embedding | init_std                   | 1   | 0      |                                |
| hidden    | init_std/sqrt(m) (1)       | 1/m | m^e (2)|                                |
| readout   | init_std, or 0 (3)         | 1   | 1      | input * output_mult / m (5)    |
| vector    | biases 0, gains 1          | 1   | 0      |                                |
| attention | query rows 0 (4)           |     |        | q.k * sqrt(base_hd)/head_dim   |

(1) = init_std*sqrt(base_fan_in/fan_in). (2) e = model.mup.wd_width_exponent (0.5). (3) 0 with
model.mup.zero_readout. (4) with model.mup.zero_query; hd = head_dim; base_hd pinned by
`pretrain scaling plan`, whose runs add heads at a fixed head dim, to the base recipe's. (5) on the
readout's input, as MuReadout: its bias is not scaled, so its update does not shrink as 1/m.
lr and wd are multipliers.
Sources: embedding TP5 Table 3/8; hidden TP5 Table 3 and Fan et al. 2025 Table 2; readout TP5
Table 8 and App. D.2; vector TP5 Table 3 and Fan et al. 2025; attention TP5 §4 (1/d attention)
and App. D.2.

TP5 = Yang et al. 2021, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
Hyperparameter Transfer" (arXiv 2203.03466). Table 8 is Table 3 rewritten with an output
multiplier: the readout keeps a width-independent init and Adam LR, its weight's contribution
is divided by m (as microsoft/mup's MuReadout with MuAdam). Fan et al. 2025 = "Robust
Layerwise Scaling Rules by Proper Weight Decay Tuning" (arXiv 2510.15262): matrix weights'
top singular value grows as sqrt(η/λ)·d^0.75; with η ∝ 1/d that is kept width-invariant by
λ ∝ sqrt(d), and vector-like parameters take λ = 0. `model.mup.wd_width_exponent` = 1.0
instead keeps η·λ invariant (Wang & Aitchison 2024, "How to set AdamW's weight decay as you
scale model and dataset size"; also microsoft/mup's MuAdam default, decoupled_wd=False).
AdamW's decay is coupled (p -= lr·λ·p), so λ here is the optimizer's weight_decay times
wd_mult.
"Scaling Diffusion Transformers Efficiently via μP" (Zheng et al. 2025) shows DiT-style models
share these rules: their conditioning pathways are embeddings (fixed fan-in) or hidden matrices.

Every constant is relative to the base width, so at m = 1 muP equals the standard
parametrization (SP) below: the same init draws, the same groups, the same first update
(tests/test_mup.py checks it). SP: all matrices N(0, init_std²) truncated at 2σ, biases 0,
attention scale 1/sqrt(head_dim), readout multiplier 1, every lr multiplier 1, weight decay on
hidden and readout matrices only; with model.mup.sp_fan_in_init the hidden and readout stds
scale as 1/sqrt(fan_in) from the base width (TP5's SP baseline, the coordinate check's).

Depth rule (off unless model.mup.depth_alpha = α > 0; muP only), with the depth multiplier
m_L = model.depth / model.mup.base_depth, for the parameters of the residual blocks (every
parameter under `blocks.`; embeddings, readout and the final norm are outside the depth
rule):

| what                                  | value            |
|---------------------------------------|------------------|
| residual branch: x + r·f(x)           | r = m_L^-α (6)   |
| block parameters' lr (matrices: ×1/m) | × m_L^(α-1)      |
| block parameters' AdamW eps           | × m_L^-α (7)     |
| init, weight decay multiplier         | unchanged (8)    |

α = 1 is CompleteP, α = 0.5 depth-muP. (6) on the branch's output, after a Peri-LN output
norm and before DiT's adaLN gate; (7) a block parameter's gradient carries the factor r, so
eps follows it and stays as negligible as at the base depth; (8) the init variance stays
σ²/m (the branch multiplier keeps the residual stream Θ(1)), λ keeps its width rule: AdamW's
decay is lr·λ, so it follows the block lr (fixed across depth at α = 1). At m_L = 1 every
factor is exactly 1: the same model, groups and updates as without the rule.
Sources: Dey et al. 2025, "Don't be lazy: CompleteP enables compute-efficient deep
transformers" (arXiv 2505.01618; rules summarised in its Table 1), as its reference
implementation writes them (EleutherAI/nanoGPT-mup, branch completep, model.py: `residual_scaling =
depth_multiplier**-depth_alpha_exp`; hidden weights, hidden norms and biases take
`lr_scale = depth_multiplier**(depth_alpha_exp - 1)`; `adam_eps *= depth_multiplier**
-depth_alpha_exp`; hidden weight decay has no depth factor). That code scales the one global
eps, embeddings' included; here only the block groups' eps scale (the gradients that carry
r; the others do not shrink with depth, so their eps keeps its meaning unscaled). α = 0.5:
Yang et al. 2023, "Tensor Programs VI: Feature Learning in Infinite-Depth Neural Networks"
(arXiv 2310.02244), and Bordelon et al. 2023 (arXiv 2309.16620): branch 1/sqrt(L), Adam lr
∝ 1/sqrt(L).

Seams a model provides: `param_kinds()` (built with `param_roles`: a family names its embedding
and readout parameters, the shape decides the rest); `output_mult` on the root module (readout
multiplier); attention modules with `head_dim` and `scale`; residual blocks in `blocks`
with `residual_mult` (the depth rule's r); optionally `query_param_slices()` (name -> row
slice of the query projection inside a fused weight) and `zero_init_param_names()` (weights
the architecture wants zero, e.g. DiT's adaLN-Zero modulation; they stay zero in SP and muP).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection

import torch
from torch import nn

from pretrain.models.config import ModelConfig

DECAYED_KINDS = ("hidden", "readout")
KINDS = ("embedding", "hidden", "readout", "vector")


def param_roles(
    model: nn.Module, embeddings: Collection[str], readouts: Collection[str]
) -> dict[str, str]:
    """Role of every parameter of `model`, the table its `param_kinds()` returns.

    Only the embeddings and the readout depend on the family, so each family names those
    parameters; every other one is hidden when matrix-like (2+ dimensions), else a vector.
    """

    def role(name: str, p: nn.Parameter) -> str:
        if name in embeddings:
            return "embedding"
        if name in readouts:
            return "readout"
        return "hidden" if p.ndim >= 2 else "vector"

    return {name: role(name, p) for name, p in model.named_parameters()}


def width_mult(cfg: ModelConfig) -> float:
    """model.width / model.mup.base_width under muP; 1 in SP."""
    if not cfg.mup.enabled:
        return 1.0
    if cfg.mup.base_width <= 0:
        raise ValueError(f"model.mup.base_width must be positive, got {cfg.mup.base_width}")
    return cfg.width / cfg.mup.base_width


BLOCK_PREFIX = "blocks."  # every family keeps its residual blocks in `self.blocks`


def in_residual_block(name: str) -> bool:
    """Whether a (canonical) parameter name belongs to a residual block (the depth rule's
    parameters)."""
    return name.startswith(BLOCK_PREFIX)


def depth_mult(cfg: ModelConfig) -> float:
    """m_L = model.depth / model.mup.base_depth with the depth rule on (muP, depth_alpha > 0);
    1 otherwise."""
    if not (cfg.mup.enabled and cfg.mup.depth_alpha):
        return 1.0
    return cfg.depth / cfg.mup.base_depth


def residual_mult(cfg: ModelConfig) -> float:
    """The residual branch multiplier m_L^-α (1 without the depth rule)."""
    m_l = depth_mult(cfg)
    return 1.0 if m_l == 1.0 else m_l**-cfg.mup.depth_alpha


def block_lr_mult(cfg: ModelConfig) -> float:
    """Extra lr factor m_L^(α-1) of every residual-block parameter (Adam; 1 without the rule)."""
    m_l = depth_mult(cfg)
    return 1.0 if m_l == 1.0 else m_l ** (cfg.mup.depth_alpha - 1.0)


def eps_multiplier(cfg: ModelConfig, in_block: bool) -> float:
    """AdamW eps factor: m_L^-α for residual-block parameters (their gradients carry the branch
    multiplier), 1 elsewhere and without the depth rule."""
    return residual_mult(cfg) if in_block else 1.0


def base_head_dim(cfg: ModelConfig) -> int:
    """Head dim at the base width (default: the head count stays fixed as width grows; a plan
    that adds heads pins it, `scaling_laws.plan.mup_pins`)."""
    return cfg.mup.base_head_dim or max(cfg.mup.base_width // cfg.num_heads, 1)


def init_std(kind: str, cfg: ModelConfig) -> float:
    """Init std of a matrix of this role: hidden fan-in grows with m, so std ∝ 1/sqrt(fan_in).
    SP with model.mup.sp_fan_in_init scales the readout that way too (no output multiplier)."""
    if not cfg.mup.enabled and cfg.mup.sp_fan_in_init and kind in DECAYED_KINDS:
        return cfg.init_std * math.sqrt(cfg.mup.base_width / cfg.width)
    return cfg.init_std / math.sqrt(width_mult(cfg)) if kind == "hidden" else cfg.init_std


def attention_scale(head_dim: int, cfg: ModelConfig) -> float:
    """Attention logit multiplier: 1/sqrt(d_head) in SP; sqrt(base_head_dim)/d_head under muP."""
    if not cfg.mup.enabled:
        return 1.0 / math.sqrt(head_dim)
    return math.sqrt(base_head_dim(cfg)) / head_dim


def output_mult(cfg: ModelConfig) -> float:
    """Readout multiplier: 1 in SP; output_mult / width_mult under muP."""
    return cfg.mup.output_mult / width_mult(cfg) if cfg.mup.enabled else 1.0


def tensor_seed(seed: int, name: str) -> int:
    """Seed of one tensor's draw: a hash of (run seed, canonical name), so a value never depends
    on which other tensors were drawn before it, on which device, or in which process."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def initial_value(
    name: str,
    shape: torch.Size,
    kind: str,
    cfg: ModelConfig,
    seed: int,
    *,
    zero: bool = False,
    query_rows: slice | None = None,
) -> torch.Tensor:
    """The full fp32 initial value of one parameter (on the CPU), a pure function of its name,
    role, shape, the config and the run seed; see the module table.

    `zero`: the architecture wants it zero (e.g. adaLN-Zero); `query_rows`: rows zeroed under
    muP's zero_query. Matrices draw from their own generator (`tensor_seed`), on the CPU so
    every device and world size gets the same bits; vectors are biases (0) or gains (1).
    """
    if kind not in KINDS:
        raise ValueError(f"parameter {name} has unknown role {kind!r} (one of {', '.join(KINDS)})")
    value = torch.empty(shape, dtype=torch.float32)
    if zero:
        return value.zero_()
    if kind != "vector" and len(shape) >= 2:
        std = init_std(kind, cfg)
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        nn.init.trunc_normal_(value, std=std, a=-2 * std, b=2 * std, generator=generator)
        if cfg.mup.enabled and kind == "readout" and cfg.mup.zero_readout:
            value.zero_()
    elif name.endswith("bias"):
        value.zero_()
    else:
        value.fill_(1.0)  # norm gains, σReparam's gamma
    if query_rows is not None:
        value[query_rows] = 0.0
    return value


def set_forward_multipliers(model: nn.Module, cfg: ModelConfig) -> None:
    """The readout multiplier, every attention module's logit scale (SP or muP) and every
    residual block's branch multiplier (the depth rule)."""
    if hasattr(model, "output_mult"):
        model.output_mult = output_mult(cfg)
    for module in model.modules():
        if hasattr(module, "head_dim") and hasattr(module, "scale"):
            module.scale = attention_scale(module.head_dim, cfg)
        if hasattr(module, "residual_mult"):
            module.residual_mult = residual_mult(cfg)


def query_slices(model: nn.Module) -> dict[str, slice]:
    """Rows of the query projection per weight: the model's own map, else fused `qkv` weights
    whose first third is the query (the layout of blocks.Attention)."""
    if hasattr(model, "query_param_slices"):
        return model.query_param_slices()
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("qkv.weight") or name.endswith("qkv.bias"):
            out[name] = slice(0, p.shape[0] // 3)
    return out


def group_multipliers(kind: str, cfg: ModelConfig, in_block: bool = False) -> tuple[float, float]:
    """(lr multiplier, weight-decay multiplier) for a parameter role, inside a residual block
    or not (the depth rule's lr factor); see the module tables."""
    if kind not in KINDS:
        raise ValueError(f"unknown parameter role {kind!r} (one of {', '.join(KINDS)})")
    if not cfg.mup.enabled:
        return 1.0, (1.0 if kind in DECAYED_KINDS else 0.0)
    m = width_mult(cfg)
    depth_lr = block_lr_mult(cfg) if in_block else 1.0
    if kind == "hidden":
        return 1.0 / m * depth_lr, m**cfg.mup.wd_width_exponent
    if kind == "readout":
        return depth_lr, 1.0
    return depth_lr, 0.0  # embedding, vector: Θ(1) lr, no decay
