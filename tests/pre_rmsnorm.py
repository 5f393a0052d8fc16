"""Pre-LN -> Pre-RMSNorm conversion ("Pre-RMSNorm and Pre-CRMSNorm Transformers", Jiang et al.
2023): the same function with the cheaper norm.

LayerNorm(x) equals RMSNorm(x) when x has zero mean. So: (1) make the residual stream zero-mean
by removing the mean (over the hidden dimension) from everything that writes into it: the
embeddings and the output projections of attention and MLP; (2) replace each LayerNorm by an
RMSNorm with the same gain and eps, and fold the LayerNorm's bias into the bias of the linear
layer that reads the norm (W(g*n + b) + c = W(g*n) + (W b + c)). Works for the LM (untied
readout) and the ViT with pre-norm LayerNorm blocks and biases; σReparam and QK-norm are not
handled.

A test helper: nothing in the package converts models; tests/test_models_blocks.py uses it to
show that the two norm options of the shared block are the same function up to this change.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pretrain.models.blocks import RMSNorm, SigmaReparamLinear
from pretrain.models.lm import DecoderLM
from pretrain.models.vit import ViT


def _center_output(linear: nn.Linear) -> None:
    """Make the layer's outputs zero-mean over its output features."""
    linear.weight -= linear.weight.mean(dim=0, keepdim=True)
    if linear.bias is not None:
        linear.bias -= linear.bias.mean()


def _to_rmsnorm(norm: nn.LayerNorm, readers: list[nn.Linear]) -> RMSNorm:
    if norm.bias is not None:
        for linear in readers:
            if linear.bias is None:
                raise ValueError(
                    "folding a LayerNorm bias needs a bias in the linear layer that reads it"
                )
            linear.bias += linear.weight @ norm.bias
    rms = RMSNorm(norm.normalized_shape[0], eps=norm.eps)
    rms = rms.to(norm.weight.device, norm.weight.dtype)
    rms.weight.copy_(norm.weight)
    return rms


@torch.no_grad()
def pre_ln_to_pre_rmsnorm(model: nn.Module) -> nn.Module:
    """Convert a Pre-LN DecoderLM or ViT in place; returns it (its cfg now says rmsnorm)."""
    cfg = model.cfg
    if cfg.norm != "layernorm" or cfg.norm_placement != "pre" or cfg.qk_norm:
        raise ValueError(
            "conversion needs model.norm=layernorm, norm_placement=pre, qk_norm=false"
        )
    if any(isinstance(m, SigmaReparamLinear) for m in model.modules()):
        raise ValueError("conversion does not handle sigma_reparam layers")
    if isinstance(model, DecoderLM):
        if model.head is None:
            raise ValueError(
                "conversion needs an untied readout (recentering would change a tied one)"
            )
        model.tok_embed.weight -= model.tok_embed.weight.mean(dim=1, keepdim=True)
    elif isinstance(model, ViT):
        _center_output(model.patch_embed)
        model.pos_embed -= model.pos_embed.mean(dim=-1, keepdim=True)
        if model.cls_token is not None:
            model.cls_token -= model.cls_token.mean(dim=-1, keepdim=True)
    else:
        raise ValueError(f"no Pre-RMSNorm conversion for {type(model).__name__}")
    for block in model.blocks:
        _center_output(block.attn.proj)
        _center_output(block.mlp.fc2)
        block.norm1 = _to_rmsnorm(block.norm1, [block.attn.qkv])
        block.norm2 = _to_rmsnorm(block.norm2, [block.mlp.fc1])
    model.norm = _to_rmsnorm(model.norm, [model.head])
    model.cfg = dataclasses.replace(cfg, norm="rmsnorm")
    return model
