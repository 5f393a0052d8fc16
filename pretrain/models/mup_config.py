"""Typed muP settings (`model.mup.*`); the rules that use them are in parametrization.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MupConfig:
    """muP switches and tunable constants. With `enabled` false the model is in SP.

    Everything is expressed relative to `base_width`: at model.width == base_width, muP and the
    standard parametrization give the same init, the same groups and the same first update
    (unless zero_readout / zero_query change the init), so hyperparameters tuned at the base
    width in SP carry over.
    """

    enabled: bool = False
    base_width: int = 64  # width at which muP and the standard parametrization coincide
    # head dim at the base width (attention logits * sqrt(base_head_dim) / head_dim). 0:
    # base_width // num_heads (heads fixed as width grows). Runs that add heads at a fixed head
    # dim must set it; `pretrain scaling plan` pins it to the base recipe's value in every run
    base_head_dim: int = 0
    zero_readout: bool = False  # init the readout (head) weight to zero
    zero_query: bool = False  # init the query projection to zero (uniform attention at step 0)
    output_mult: float = 1.0  # tunable readout multiplier at the base width (alpha_output)
    # Matrix weight decay lambda ∝ width_mult**wd_width_exponent (learning rate ∝ 1/width_mult):
    # 0.5 is Fan et al. 2025's rule (keeps the top singular value sqrt(eta/lambda)*d^0.75 fixed);
    # 1.0 keeps eta*lambda fixed (the AdamW EMA timescale rule of Wang & Aitchison 2024; also
    # what microsoft/mup's MuAdam does by default: decoupled_wd=False multiplies weight decay
    # by the width multiplier); 0.0 keeps lambda fixed (MuAdam with decoupled_wd=True).
    wd_width_exponent: float = 0.5
    # SP only (enabled false): hidden and readout init std init_std*sqrt(base_width/width), the
    # standard 1/sqrt(fan_in) init with init_std its value at base_width: TP5's SP baseline,
    # which is stable at init and blows up in training (the coordinate check's SP contrast)
    sp_fan_in_init: bool = False
    log_singular_values: bool = False  # log every matrix's top singular value at log steps
    # Depth rule (depth-muP / CompleteP, parametrization.py), on top of the width rules: each
    # residual branch is multiplied by (depth/base_depth)^-depth_alpha and the blocks' learning
    # rate and AdamW eps follow. 0 = off (every run as without it); 0.5 = depth-muP (Yang et
    # al. 2023); 1.0 = CompleteP (Dey et al. 2025). Ignored in SP (enabled false)
    depth_alpha: float = 0.0
    # depth the hyperparameters were tuned at (where the depth rule is the identity); required
    # with depth_alpha != 0. `pretrain scaling plan` pins it to the base recipe's depth
    base_depth: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.depth_alpha <= 1.0:
            raise ValueError(f"model.mup.depth_alpha must be in [0, 1] (0.5: depth-muP, "
                             f"1: CompleteP), got {self.depth_alpha}")
        if self.base_depth < 0 or (self.depth_alpha and self.base_depth == 0):
            raise ValueError(f"model.mup.base_depth must be > 0 with model.mup.depth_alpha="
                             f"{self.depth_alpha} (the depth the hyperparameters were tuned "
                             f"at), got {self.base_depth}")
