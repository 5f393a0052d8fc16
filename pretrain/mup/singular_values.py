"""Top singular value of every weight matrix: the diagnostic of Fan et al. 2025.

"Robust Layerwise Scaling Rules by Proper Weight Decay Tuning" (arXiv 2510.15262) observes that
under AdamW a matrix's top singular value settles near sqrt(η/λ)·d^0.75; with muP's η ∝ 1/d the
rule λ ∝ sqrt(d) (model.mup.wd_width_exponent = 0.5) keeps it width-invariant, so matching σ_max
across widths checks that a width-scaled run is in the same regime as its proxy.

`top_singular_values` is collective under FSDP2 (each DTensor is gathered): call it on every rank.
"""

from __future__ import annotations

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
        if p.ndim != 2:
            continue
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = float(torch.linalg.matrix_norm(full.detach().float(), ord=2))
    return out
