"""muP rules that hold where users take them: head counts that grow with width, the readout
bias under the readout multiplier, σReparam's initial function."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.scaling_laws.plan import candidate_shapes, model_stats_fn, plan_isoflop

REPO = Path(__file__).resolve().parent.parent
VIT_RECIPE = REPO / "configs" / "mup_vit_digits.yaml"


def attention_scales(model: torch.nn.Module) -> set[float]:
    return {m.scale for m in model.modules() if hasattr(m, "head_dim") and hasattr(m, "scale")}


def test_every_planned_mup_run_keeps_the_base_models_attention_scale():
    """`pretrain scaling plan` holds head_dim fixed and raises num_heads; muP's 1/d attention
    must then give every run the base recipe's scale (1/sqrt(8) here), not one that shrinks
    as heads are added (base_width // num_heads of the *current* head count)."""
    base = load_config(VIT_RECIPE)
    base_scales = attention_scales(build_model(base.model))
    assert base_scales == {math.sqrt(8) / 8}
    shapes = candidate_shapes(base.model.width, base.model.num_heads, base.model.depth)
    runs = plan_isoflop([3e9, 3e10], 3, shapes, model_stats_fn(VIT_RECIPE),
                        base.data.global_batch_size, min_steps=5, family="vit")  # fmt: skip
    assert {r.shape.num_heads for r in runs} != {base.model.num_heads}  # heads do grow
    for run in runs:
        cfg = load_config(VIT_RECIPE, [f"{k}={v}" for k, v in run.overrides.items()])
        assert attention_scales(build_model(cfg.model)) == base_scales, run.name


def test_an_explicit_base_head_dim_wins_over_the_recipe():
    cfg = load_config(VIT_RECIPE, ["model.width=128", "model.num_heads=16",
                                   "model.mup.base_head_dim=4"])  # fmt: skip
    assert attention_scales(build_model(cfg.model)) == {math.sqrt(4) / 8}
