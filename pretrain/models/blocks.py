"""The transformer block shared by every model family: plain single-device PyTorch.

Parallelism, activation checkpointing and compilation are applied from outside
(pretrain/engines/); nothing here knows about ranks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "rmsnorm":
        return RMSNorm(dim)
    raise ValueError(f"unknown norm {kind!r} (layernorm | rmsnorm)")


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention.

    `scale` multiplies the attention logits: 1/sqrt(d_head) in the standard parametrization,
    1/d_head under muP (set by the parametrization, not here).
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        if cfg.width % cfg.num_heads:
            raise ValueError(f"model.width={cfg.width} is not divisible by model.num_heads={cfg.num_heads}")
        self.num_heads, self.head_dim, self.causal = cfg.num_heads, cfg.width // cfg.num_heads, causal
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.q_norm = make_norm(cfg.norm, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg.norm, self.head_dim) if cfg.qk_norm else nn.Identity()
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.width, hidden)
        self.fc2 = nn.Linear(hidden, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        self.norm1 = make_norm(cfg.norm, cfg.width)
        self.attn = Attention(cfg, causal=causal)
        self.norm2 = make_norm(cfg.norm, cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


def block_matmul_flops(cfg: ModelConfig, tokens: int, attended: int | None = None) -> int:
    """Forward FLOPs of one block for `tokens` query tokens (2 FLOPs per multiply-add).

    Counts the four projections, the MLP and the two attention matmuls (QK^T and AV) over
    `attended` keys per query (default: all tokens); norms, softmax and biases are not counted.
    """
    d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    attended = tokens if attended is None else attended
    linear = 2 * tokens * (4 * d * d + 2 * d * hidden)
    attention = 2 * 2 * tokens * attended * d
    return linear + attention
