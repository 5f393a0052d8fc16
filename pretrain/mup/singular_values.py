"""Top singular value of every weight matrix: the diagnostic of Fan et al. 2025.

"Robust Layerwise Scaling Rules by Proper Weight Decay Tuning" (arXiv 2510.15262) observes that
under AdamW a matrix's top singular value settles near sqrt(η/λ)·d^0.75; with muP's η ∝ 1/d the
rule λ ∝ sqrt(d) (model.mup.wd_width_exponent = 0.5) keeps it width-invariant, so matching σ_max
across widths checks that a width-scaled run is in the same regime as its proxy.

`top_singular_values` is collective under FSDP2 (each DTensor is gathered) and DeepSpeed ZeRO-3
(each partitioned parameter is gathered): call it on every rank.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from pretrain.optim import canonical_name

MATRIX_KINDS = ("hidden", "readout")


@torch.no_grad()
def top_singular_values(model: nn.Module, kinds: dict[str, str] | None = None) -> dict[str, float]:
    """Canonical parameter name -> σ_max, for matrix-like weights (hidden and readout roles when
    `kinds` is given, else every 2-D weight). Gathers sharded (DTensor) parameters."""
    out = {}
    for name, p in model.named_parameters():
        name = canonical_name(name)
        if kinds is not None and kinds.get(name) not in MATRIX_KINDS:
            continue
        if len(getattr(p, "ds_shape", p.shape)) != 2:
            continue
        with _gathered(p):
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = float(torch.linalg.matrix_norm(full.detach().float(), ord=2))
    return out


def _gathered(p: torch.Tensor) -> contextlib.AbstractContextManager:
    """DeepSpeed ZeRO-3 keeps a shard per rank (`ds_id`); gather the full parameter meanwhile."""
    if not hasattr(p, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([p], modifier_rank=None)
