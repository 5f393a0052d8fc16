"""Attention entropy per layer (Zhai et al. 2023: entropy collapse precedes instability).

Every Attention module records the entropy of its attention distributions for one forward;
values are averaged over ranks so rank 0 logs the whole evaluation batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from pretrain.models.blocks import Attention


@torch.no_grad()
def attention_entropy(model: nn.Module, run_forward: Callable[[], object]) -> dict[str, float]:
    """{"attn_entropy/layer{i}_mean": mean over heads, ".._min_head": the lowest head} in nats,
    from the forward that `run_forward` performs; layers in module order."""
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    for a in attns:
        a.record_entropy = True
    try:
        run_forward()
    finally:
        for a in attns:
            a.record_entropy = False
    if not attns:
        return {}
    ent = torch.stack([a.entropy.float() for a in attns])  # [layers, heads]
    for a in attns:
        a.entropy = None
    if dist.is_initialized():
        dist.all_reduce(ent, op=dist.ReduceOp.SUM)
        ent = ent / dist.get_world_size()
    ent = ent.cpu()
    out = {}
    for i, row in enumerate(ent):
        out[f"attn_entropy/layer{i}_mean"] = float(row.mean())
        out[f"attn_entropy/layer{i}_min_head"] = float(row.min())
    return out
