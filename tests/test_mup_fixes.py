"""muP rules that hold where users take them: head counts that grow with width, the readout
bias under the readout multiplier, σReparam's initial function."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pretrain.cli import main
from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.scaling_laws.plan import read_sweep
from tests.test_mup_families import built, family_cfg

REPO = Path(__file__).resolve().parent.parent
VIT_RECIPE = REPO / "configs" / "mup_vit_digits.yaml"


def attention_scales(model: torch.nn.Module) -> set[float]:
    return {m.scale for m in model.modules() if hasattr(m, "head_dim") and hasattr(m, "scale")}


def test_every_planned_mup_run_keeps_the_base_models_attention_scale(tmp_path):
    """`pretrain scaling plan` holds head_dim fixed and raises num_heads; muP's 1/d attention
    must then give every run it writes the base recipe's scale (1/sqrt(8) here), not one that
    shrinks as heads are added (base_width // num_heads of the *current* head count)."""
    base = load_config(VIT_RECIPE)
    base_scales = attention_scales(build_model(base.model))
    assert base_scales == {math.sqrt(8) / 8}
    sweep = tmp_path / "sweep.yaml"
    with pytest.raises(SystemExit) as e:
        main(["scaling", "plan", "--base", str(VIT_RECIPE), "--budgets", "3e9", "3e10",
              "--points", "3", "--min-steps", "5", "-o", str(sweep)])  # fmt: skip
    assert e.value.code == 0
    runs = read_sweep(sweep)["runs"]
    assert len({run["overrides"]["model.num_heads"] for run in runs}) > 1  # heads do grow
    for run in runs:
        overrides = [f"{k}={v}" for k, v in run["overrides"].items()]
        cfg = load_config(VIT_RECIPE, overrides)
        assert attention_scales(build_model(cfg.model)) == base_scales, run["name"]


def test_a_head_count_set_at_the_base_width_stays_the_standard_parametrization():
    """Outside a plan the default still reads the current head count: 8 heads at the base
    width are muP's base model, whose attention scale is SP's 1/sqrt(head_dim)."""
    cfg = load_config(VIT_RECIPE, ["model.num_heads=8"])
    assert attention_scales(build_model(cfg.model)) == {math.sqrt(4) / 4}


READOUT_BIAS = {"vit": "head.bias", "lm": "head.bias", "dit": "final.linear.bias"}


def forward(model: torch.nn.Module, cfg) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    if m.family == "vit":
        v = m.vit
        return model(torch.randn(2, v.in_channels, v.image_size, v.image_size, generator=g))
    if m.family == "lm":
        return model(torch.randint(0, m.lm.vocab_size, (2, 16), generator=g))
    d = m.dit
    x = torch.randn(2, d.in_channels, d.image_size, d.image_size, generator=g)
    return model(x, torch.rand(2, generator=g) * 1000, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("family", sorted(READOUT_BIAS))
def test_the_readout_bias_moves_the_output_by_its_own_step_at_every_width(family):
    """microsoft/mup's MuReadout scales the readout's *input* by output_mult/m, so a bias step
    moves the output by itself at every width (the bias is vector-like: Θ(1) Adam lr). Scaling
    the whole output would shrink the bias's effective update as 1/m."""
    shifts = {}
    for width in (32, 128):
        cfg = family_cfg(family, f"model.width={width}", "model.mup.base_width=32",
                         "model.mup.enabled=true", "model.bias=true")  # fmt: skip
        model, opt = built(cfg)
        bias = dict(model.named_parameters())[READOUT_BIAS[family]]
        group = next(g for g in opt.param_groups if any(p is bias for p in g["params"]))
        assert group["lr_mult"] == 1.0
        with torch.no_grad():
            before = forward(model, cfg)
            bias.add_(0.25)
            shifts[width] = forward(model, cfg) - before
    for width, shift in shifts.items():
        assert torch.allclose(shift, torch.full_like(shift, 0.25), atol=1e-5), width


@pytest.mark.parametrize("family", sorted(READOUT_BIAS))
def test_sigma_reparam_leaves_the_initial_function_unchanged(family):
    """γ starts at σ(W₀) (Zhai et al.'s released code): W₀·γ/σ = W₀, so wrapping every block
    linear changes nothing at init, and the init std (muP's 1/sqrt(fan_in)) still sets the
    scale. With γ = 1 every layer would start at spectral norm 1 instead."""
    common = ["model.width=64", "model.mup.base_width=32", "model.mup.enabled=true"]
    plain, _ = built(family_cfg(family, *common))
    cfg = family_cfg(family, *common, "model.sigma_reparam=true")
    wrapped, _ = built(cfg)
    assert any(n.endswith("gamma") for n, _ in wrapped.named_parameters())
    with torch.no_grad():
        expected = forward(plain.eval(), cfg)
        assert torch.allclose(forward(wrapped.eval(), cfg), expected, rtol=1e-6, atol=1e-7)
        # a training forward takes one more power-iteration step from the converged u
        assert torch.allclose(forward(wrapped.train(), cfg), expected, rtol=1e-3, atol=1e-4)
    unit, _ = built(family_cfg(family, *common, "model.sigma_reparam=true",
                               "model.sigma_reparam_gamma_init=one"))  # fmt: skip
    gammas = [p for n, p in unit.named_parameters() if n.endswith("gamma")]
    assert gammas and all(g.item() == 1.0 for g in gammas)
