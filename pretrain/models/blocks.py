"""The transformer block shared by every model family: plain single-device PyTorch.

Options (all from `model.*`): LayerNorm or RMSNorm; pre-norm or Peri-LN placement (Kim et al.
2025: each sublayer's input *and* output normalised before the residual add); QK-norm; σReparam
linears (Zhai et al. 2023); GELU or SwiGLU MLP; rotary position embedding; per-head attention
entropy recorded on request. Parallelism, activation checkpointing and compilation are applied
from outside (pretrain/engines/); nothing here knows about ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from pretrain.compat import in_backward
from pretrain.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def patchify(images: torch.Tensor, patch_size: int, channels: int, image_size: int,
             where: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, num_patches, C*p*p], row-major patches.

    Images of another shape than the model's (`where`.in_channels x image_size²) are a recipe
    that does not match its data: one line naming both, not a reshape error deep in the step."""
    b, c, h, w = images.shape
    if (c, h, w) != (channels, image_size, image_size):
        raise ValueError(
            f"the data's images are {c}x{h}x{w} (channels x height x width) but the model takes "
            f"{channels}x{image_size}x{image_size}: set {where}.in_channels and "
            f"{where}.image_size to match the data"
        )
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def make_norm(kind: str, dim: int, affine: bool = True, eps: float = 1e-5) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, affine=affine)
    raise ValueError(f"unknown norm {kind!r} (layernorm | rmsnorm)")


def model_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The affine norm `model.norm` / `model.norm_eps` configure (every one but DiT's adaLN)."""
    return make_norm(cfg.norm, dim, eps=cfg.norm_eps)


class SigmaReparamLinear(nn.Linear):
    """Linear layer with weight W' = (gamma / sigma(W)) W ("Stabilizing Transformer Training by
    Preventing Attention Entropy Collapse", Zhai et al. 2023).

    sigma(W), the spectral norm, is estimated by power iteration: one step per training forward,
    its left singular vector kept in the buffer `u` (saved in checkpoints, so resume is exact).
    The step is skipped in eval and in activation-checkpoint recomputation, so a recomputed
    forward equals the original one. Gradients flow through sigma = u^T W v (u, v constants).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.gamma = nn.Parameter(torch.ones(1))
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))

    @torch.no_grad()
    def power_iteration(self, steps: int = 1) -> None:
        u = power_iterate(self.weight.detach().float(), self.u.float(), steps)
        self.u.copy_(u.to(self.u.dtype))

    def sigma(self) -> torch.Tensor:
        u = self.u.to(self.weight.dtype)
        v = F.normalize(self.weight.detach().t() @ u, dim=0)
        return u @ (self.weight @ v)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * (self.gamma / self.sigma())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and not in_backward():
            self.power_iteration()
        return F.linear(x, self.effective_weight(), self.bias)


def make_linear(cfg: ModelConfig, in_features: int, out_features: int) -> nn.Linear:
    cls = SigmaReparamLinear if cfg.sigma_reparam else nn.Linear
    return cls(in_features, out_features, bias=cfg.bias)


@torch.no_grad()
def power_iterate(w: torch.Tensor, u: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` power-iteration steps for the top left singular vector of `w`, from `u`."""
    for _ in range(steps):
        v = F.normalize(w.t() @ u, dim=0)
        u = F.normalize(w @ v, dim=0)
    return u


# ------------------------------------------------------------------ rotary position embedding


def rope_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [B, 1, T, head_dim/2] for integer positions [B, T] (Su et al. 2021)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    )
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, hd/2]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i+hd/2}) of x [B, H, T, hd] by the position angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


# ------------------------------------------------------------------ attention and MLP


def document_block_mask(doc_ids: torch.Tensor) -> BlockMask:
    """[B, T] document ids -> FlexAttention block mask, block-diagonal causal (query i attends
    key j iff j <= i in the same document), the same rule as lm.document_causal_mask.

    Unlike the dense [B, 1, T, T] boolean mask (which forces SDPA off its flash kernels) it
    stores O(B * (T/128)^2) block indices, and fully masked blocks are never computed. Built by
    a compiled `create_block_mask` (as torchtitan does) so the dense mask never exists.
    """

    def same_document_causal(b, h, q_idx, kv_idx):
        return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & (kv_idx <= q_idx)

    b, t = doc_ids.shape
    build = _compiled("create_block_mask") if doc_ids.is_cuda else create_block_mask
    return build(same_document_causal, b, None, t, t, device=doc_ids.device)


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str) -> Callable:
    """FlexAttention's functions compiled once per process (uncompiled they materialise the
    full score matrix, which is what they are here to avoid)."""
    if name not in _COMPILED:
        fn = {"create_block_mask": create_block_mask, "flex_attention": flex_attention}[name]
        _COMPILED[name] = torch.compile(fn)
    return _COMPILED[name]


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention.

    `scale` multiplies the attention logits: 1/sqrt(d_head) in the standard parametrization,
    set by the parametrization under muP. `attn_mask` is boolean (True = may attend), e.g. the
    block-diagonal causal mask of packed documents, or a FlexAttention `BlockMask` for the same
    mask at flash-level memory (`document_block_mask`; run compiled on CUDA, uncompiled and
    forward-only elsewhere, as torch 2.13 has no FlexAttention backward on the CPU). With
    `record_entropy` set (dense masks only), the forward also
    stores the attention entropy per head (mean over batch and queries) in `entropy`.
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        if cfg.width % cfg.num_heads:
            raise ValueError(
                f"model.width={cfg.width} is not divisible by model.num_heads={cfg.num_heads}"
            )
        self.num_heads, self.head_dim, self.causal = (
            cfg.num_heads,
            cfg.width // cfg.num_heads,
            causal,
        )
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = make_linear(cfg, cfg.width, 3 * cfg.width)
        self.proj = make_linear(cfg, cfg.width, cfg.width)
        self.q_norm = model_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = model_norm(cfg, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout
        self.record_entropy = False
        self.entropy: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if isinstance(attn_mask, BlockMask):
            flex = _compiled("flex_attention") if q.is_cuda else flex_attention
            y = flex(q, k, v, block_mask=attn_mask, scale=self.scale)
            return self.proj(y.transpose(1, 2).reshape(b, t, -1))  # -1: local heads under TP
        if self.record_entropy:
            self.entropy = self._entropy(q, k, attn_mask)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=self.causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))  # -1: local heads under TP

    @torch.no_grad()
    def _entropy(
        self, q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Shannon entropy (nats) of each query's attention distribution, mean per head: [H]."""
        logits = (q.float() @ k.float().transpose(-1, -2)) * self.scale
        t = logits.shape[-1]
        if attn_mask is None and self.causal:
            attn_mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        p = logits.softmax(-1)
        entropy = -torch.special.xlogy(p, p).sum(-1)  # [B, H, T]
        return entropy.mean(dim=(0, 2))


def swiglu_hidden(cfg: ModelConfig) -> int:
    """SwiGLU hidden size: 2/3 of width*mlp_ratio (same parameters as GELU), rounded up to 8."""
    return 8 * math.ceil(cfg.width * cfg.mlp_ratio * 2 / 3 / 8)


class MLP(nn.Module):
    """GELU MLP, or SwiGLU (Shazeer 2020) with gate and value fused in `fc1`."""

    def __init__(self, cfg: ModelConfig, kind: str = "gelu"):
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"unknown MLP {kind!r} (gelu | swiglu)")
        self.kind = kind
        self.hidden = swiglu_hidden(cfg) if kind == "swiglu" else int(cfg.width * cfg.mlp_ratio)
        self.fc1 = make_linear(cfg, cfg.width, self.hidden * (2 if kind == "swiglu" else 1))
        self.fc2 = make_linear(cfg, self.hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * value)
        return self.fc2(F.gelu(h))


def resolve_mlp(cfg: ModelConfig, family_default: str) -> str:
    return family_default if cfg.mlp == "auto" else cfg.mlp


def scale_branch(branch: torch.Tensor, residual_mult: float) -> torch.Tensor:
    """A residual branch times the depth rule's multiplier; untouched at 1 (no extra op)."""
    return branch if residual_mult == 1.0 else branch * residual_mult


class TransformerBlock(nn.Module):
    """Residual block. pre: x + r*f(norm(x)); peri: x + r*norm_out(f(norm(x))), for f = attn,
    mlp; r = `residual_mult`, the depth rule's branch multiplier (1 unless the
    parametrization sets it)."""

    def __init__(self, cfg: ModelConfig, causal: bool = False, mlp: str = "gelu"):
        super().__init__()
        peri = cfg.norm_placement == "peri"
        self.norm1 = model_norm(cfg, cfg.width)
        self.attn = Attention(cfg, causal=causal)
        self.attn_out_norm = model_norm(cfg, cfg.width) if peri else nn.Identity()
        self.norm2 = model_norm(cfg, cfg.width)
        self.mlp = MLP(cfg, mlp)
        self.mlp_out_norm = model_norm(cfg, cfg.width) if peri else nn.Identity()
        self.residual_mult = 1.0

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        r = self.residual_mult
        x = x + scale_branch(self.attn_out_norm(self.attn(self.norm1(x), attn_mask, rope)), r)
        return x + scale_branch(self.mlp_out_norm(self.mlp(self.norm2(x))), r)


def block_matmul_flops(
    cfg: ModelConfig, tokens: int, attended: int | None = None, mlp: str = "gelu"
) -> int:
    """Forward FLOPs of one block for `tokens` query tokens (2 FLOPs per multiply-add).

    Counts the four projections, the MLP and the two attention matmuls (QK^T and AV) over
    `attended` keys per query (default: all tokens); norms, softmax, RoPE, biases and the
    σReparam power iteration (per step, not per sample) are not counted.
    """
    d = cfg.width
    attended = tokens if attended is None else attended
    if mlp == "swiglu":
        mlp_flops = 2 * tokens * 3 * d * swiglu_hidden(cfg)
    else:
        mlp_flops = 2 * tokens * 2 * d * int(d * cfg.mlp_ratio)
    linear = 2 * tokens * 4 * d * d + mlp_flops
    attention = 2 * 2 * tokens * attended * d
    return linear + attention


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP wrapper; FSDP2 and activation checkpointing keep the root as is.

    Losses and eval hooks receive the engine's wrapped model: call the wrapper for forwards
    (DDP's gradient hooks live there); read attributes (cfg, submodules) through this.
    """
    return getattr(model, "module", model)
