"""muP parametrization rules (pretrain/models/parametrization.py), in one process."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pretrain.config import TrainConfig
from pretrain.models import build_model
from pretrain.models.parametrization import group_multipliers, width_mult
from pretrain.optim import build_optimizer, set_lr


def train_cfg(width: int, mup: bool, base_width: int = 32, **mup_kw) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.width, cfg.model.depth, cfg.model.num_heads = width, 2, 2
    cfg.model.mup.enabled, cfg.model.mup.base_width = mup, base_width
    for k, v in mup_kw.items():
        setattr(cfg.model.mup, k, v)
    cfg.optim.lr, cfg.optim.weight_decay = 1e-2, 0.1
    return cfg


def built(cfg: TrainConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    return model, build_optimizer(model, model.param_kinds(), cfg.optim, cfg.model)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)


def one_step(model, optimizer, lr: float) -> None:
    images, labels = batch()
    set_lr(optimizer, lr)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def groups_summary(optimizer) -> list[tuple]:
    return [
        (g["lr_mult"], g["wd_mult"], g["weight_decay"], len(g["params"]))
        for g in optimizer.param_groups
    ]


def test_mup_at_base_width_is_the_standard_parametrization():
    """width_mult = 1: the same init draws, multipliers, groups and the same first AdamW update."""
    sp_cfg, mup_cfg = train_cfg(32, mup=False), train_cfg(32, mup=True, base_width=32)
    sp, sp_opt = built(sp_cfg)
    mup, mup_opt = built(mup_cfg)
    for (name, a), b in zip(sp.named_parameters(), mup.parameters()):
        assert torch.equal(a, b), name
    assert sp.output_mult == mup.output_mult == 1.0
    assert (
        [b.attn.scale for b in sp.blocks]
        == [b.attn.scale for b in mup.blocks]
        == [1 / math.sqrt(16)] * 2
    )
    assert groups_summary(sp_opt) == groups_summary(mup_opt)
    one_step(sp, sp_opt, 1e-2)
    one_step(mup, mup_opt, 1e-2)
    for (name, a), b in zip(sp.named_parameters(), mup.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_group_multipliers_follow_the_rules(exponent):
    cfg = train_cfg(128, mup=True, base_width=32, wd_width_exponent=exponent).model
    assert width_mult(cfg) == 4
    assert group_multipliers("hidden", cfg) == (0.25, 4**exponent)
    assert group_multipliers("readout", cfg) == (1.0, 1.0)
    assert group_multipliers("embedding", cfg) == group_multipliers("vector", cfg) == (1.0, 0.0)
    with pytest.raises(ValueError, match="unknown parameter role"):
        group_multipliers("bogus", cfg)


def test_optimizer_groups_carry_the_rules_per_parameter_role():
    cfg = train_cfg(128, mup=True, base_width=32)
    model, opt = built(cfg)
    kinds = model.param_kinds()
    role_of = {id(p): kinds[n] for n, p in model.named_parameters()}
    set_lr(opt, 3e-3)
    for g in opt.param_groups:
        rules = {group_multipliers(role_of[id(p)], cfg.model) for p in g["params"]}
        assert rules == {(g["lr_mult"], g["wd_mult"])}
        assert g["lr"] == pytest.approx(3e-3 * g["lr_mult"])
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_mult"])
    assert {kinds[n] for n in kinds} == {"embedding", "hidden", "readout", "vector"}


def test_eta_lambda_is_width_invariant_with_exponent_one():
    """wd_width_exponent=1: hidden lr*weight_decay equal at every width (AdamW EMA timescale)."""
    products = []
    for width in (32, 64, 256):
        model, opt = built(train_cfg(width, mup=True, base_width=32, wd_width_exponent=1.0))
        set_lr(opt, 1e-2)
        qkv = model.blocks[0].attn.qkv.weight
        group = next(g for g in opt.param_groups if any(p is qkv for p in g["params"]))
        products.append(group["lr"] * group["weight_decay"])
    assert products == pytest.approx([products[0]] * 3)


def test_init_scales_and_forward_multipliers_with_width():
    """Hidden init std ∝ 1/sqrt(fan_in); embeddings and readout keep theirs; readout output /m;
    attention logits sqrt(base_head_dim)/head_dim."""
    stds = {}
    for width in (32, 512):
        model, _ = built(train_cfg(width, mup=True, base_width=32))
        stds[width] = {
            n: p.std().item()
            for n, p in model.named_parameters()
            if p.ndim >= 2 and p.numel() >= 512
        }
        assert model.output_mult == 32 / width
        head_dim = width // 2
        assert all(b.attn.scale == pytest.approx(math.sqrt(16) / head_dim) for b in model.blocks)
    for name, small in stds[32].items():
        ratio = stds[512][name] / small
        expected = 0.25 if "blocks." in name else 1.0  # sqrt(32/512)
        assert ratio == pytest.approx(expected, rel=0.1), name


def test_zero_readout_and_zero_query_options():
    model, _ = built(train_cfg(64, mup=True, base_width=32, zero_readout=True, zero_query=True))
    assert torch.count_nonzero(model.head.weight) == 0
    for block in model.blocks:
        w = block.attn.qkv.weight
        assert torch.count_nonzero(w[:64]) == 0 and torch.count_nonzero(w[64:]) == w[64:].numel()
    images, _ = batch()
    assert torch.count_nonzero(model(images)) == 0
    sp, _ = built(train_cfg(64, mup=False, zero_readout=True, zero_query=True))
    assert torch.count_nonzero(sp.head.weight) > 0  # the options belong to muP only


def test_mup_survives_a_deepcopy_and_rebuild_from_config():
    """The multipliers are a pure function of the config: rebuilding gives the same model."""
    cfg = train_cfg(96, mup=True, base_width=32)
    a, _ = built(cfg, seed=3)
    b, _ = built(copy.deepcopy(cfg), seed=3)
    assert a.output_mult == b.output_mult and all(
        torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters())
    )
