"""Shared block options: σReparam, Pre-LN -> Pre-RMSNorm conversion, attention entropy, configs."""

from __future__ import annotations

import math

import pytest
import torch
from pre_rmsnorm import pre_ln_to_pre_rmsnorm

from pretrain.config import load_config
from pretrain.models import build_model, get_family, model_stats
from pretrain.models.attention_stats import attention_entropy
from pretrain.models.blocks import RMSNorm, SigmaReparamLinear


def build(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        load_config(
            None, ["model.width=32", "model.depth=2", "model.num_heads=2", *overrides]
        ).model
    )


def spectral_norm(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().double(), ord=2).item()


def test_sigma_reparam_effective_weight_has_spectral_norm_gamma():
    torch.manual_seed(0)
    layer = SigmaReparamLinear(48, 96)
    torch.nn.init.normal_(layer.weight)
    layer.gamma.data.fill_(0.7)
    layer.power_iteration(100)
    assert spectral_norm(layer.effective_weight()) == pytest.approx(0.7, rel=1e-4)
    x = torch.randn(5, 48)
    assert torch.allclose(layer(x), x @ layer.effective_weight().t() + layer.bias, atol=1e-6)


def test_sigma_reparam_tracks_sigma_while_training():
    """One power-iteration step per forward tracks sigma(W) as the weights move. The estimate
    u^T W v never exceeds sigma, so ||W'|| >= gamma; it lags (here by up to ~15%) only when the
    top singular direction switches between close singular values; more steps on the final
    weights converge it to gamma."""
    model = build("model.family=lm", "model.sigma_reparam=true", "model.lm.seq_len=16").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        tokens = torch.randint(0, 256, (4, 17))
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
    layers = [m for m in model.modules() if isinstance(m, SigmaReparamLinear)]
    assert len(layers) == 2 * 4  # qkv, proj, fc1, fc2 per block
    for layer in layers:
        assert layer.gamma.item() != 1.0  # gamma is learned
        ratio = spectral_norm(layer.effective_weight()) / layer.gamma.item()
        assert 1 - 1e-5 <= ratio < 1.25
        layer.power_iteration(300)
        assert spectral_norm(layer.effective_weight()) == pytest.approx(
            layer.gamma.item(), rel=1e-3
        )
    # Eval forwards leave the power-iteration state alone.
    u = [layer.u.clone() for layer in layers]
    model.eval()
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 16)))
    assert all(torch.equal(a, layer.u) for a, layer in zip(u, layers))


@pytest.mark.parametrize("family", ["lm", "vit"])
def test_pre_ln_converted_to_pre_rmsnorm_gives_the_same_logits(family):
    model = build(f"model.family={family}", "model.lm.seq_len=16").double()
    with torch.no_grad():  # move every parameter (norm gains and biases included) off its init
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    x = (
        torch.randint(0, 256, (3, 16))
        if family == "lm"
        else torch.randn(3, 1, 8, 8, dtype=torch.float64)
    )
    with torch.no_grad():
        before = model(x)
        converted = pre_ln_to_pre_rmsnorm(model)
        after = converted(x)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in converted.modules())
    assert sum(isinstance(m, RMSNorm) for m in converted.modules()) == 2 * 2 + 1
    assert converted.cfg.norm == "rmsnorm"
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_pre_rmsnorm_conversion_in_float32():
    model = build("model.family=lm", "model.lm.seq_len=16")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        before = model(x)
        after = pre_ln_to_pre_rmsnorm(model)(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_conversion_refuses_what_it_cannot_preserve():
    with pytest.raises(ValueError, match="untied"):
        pre_ln_to_pre_rmsnorm(build("model.family=lm", "model.lm.tie_embeddings=true"))
    with pytest.raises(ValueError, match="norm=layernorm"):
        pre_ln_to_pre_rmsnorm(build("model.family=lm", "model.norm_placement=peri"))


def test_attention_entropy_of_uniform_attention_is_known():
    """Zero queries and keys give uniform attention: entropy ln(i+1) for causal query i, ln T
    for bidirectional attention."""
    lm = build("model.family=lm", "model.lm.seq_len=12").eval()
    vit = build("model.family=vit").eval()
    for model in (lm, vit):
        with torch.no_grad():
            for block in model.blocks:
                block.attn.qkv.weight[: 2 * 32].zero_()
                block.attn.qkv.bias.zero_()
    out = attention_entropy(lm, lambda: lm(torch.randint(0, 256, (2, 12))))
    expected = sum(math.log(i + 1) for i in range(12)) / 12
    assert out["attn_entropy/layer0_mean"] == pytest.approx(expected, rel=1e-5)
    assert out["attn_entropy/layer1_min_head"] == pytest.approx(expected, rel=1e-5)
    out = attention_entropy(vit, lambda: vit(torch.randn(2, 1, 8, 8)))
    assert out["attn_entropy/layer1_mean"] == pytest.approx(math.log(17), rel=1e-5)


def test_attention_entropy_reports_the_lowest_head():
    model = build("model.family=vit").eval()
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight[:16].mul_(40)  # head 0's queries: peaked attention
    out = get_family("vit").eval_extras(
        model,
        {"image": torch.randn(4, 1, 8, 8), "label": torch.zeros(4, dtype=torch.long)},
        0,
        None,
    )
    assert out == {}  # off unless model.attn_entropy
    out = attention_entropy(model, lambda: model(torch.randn(4, 1, 8, 8)))
    assert out["attn_entropy/layer0_min_head"] < out["attn_entropy/layer0_mean"] <= math.log(17)


@pytest.mark.parametrize("family", ["vit", "dit", "lm"])
def test_every_parameter_has_a_role_and_stats_match_the_built_model(family):
    cfg = load_config(
        None,
        [
            f"model.family={family}",
            "model.width=32",
            "model.depth=2",
            "model.num_heads=2",
            "model.sigma_reparam=true",
            "model.norm_placement=peri",
        ],
    ).model
    model = build_model(cfg)
    kinds = model.param_kinds()
    assert set(kinds) == {n for n, _ in model.named_parameters()}
    assert set(kinds.values()) <= {"embedding", "hidden", "readout", "vector"}
    assert "readout" in kinds.values() or cfg.lm.tie_embeddings
    stats = model_stats(cfg)
    assert stats["params"] == sum(p.numel() for p in model.parameters())
    embedding = sum(
        p.numel() for n, p in model.named_parameters() if n in model.embedding_param_names()
    )
    assert stats["params_non_embedding"] == stats["params"] - embedding > 0
    assert stats["flops_per_sample"] == model.flops_per_sample() > 0
    assert model.output_mult == 1.0
    assert all(hasattr(m, "scale") for m in model.modules() if type(m).__name__ == "Attention")


def test_sigma_reparam_power_iteration_runs_once_under_activation_checkpointing():
    """The backward recompute of a checkpointed block must not step the power iteration again,
    or the recomputed forward would differ from the original."""
    from pretrain.engines.base import apply_activation_checkpointing

    plain = build("model.family=lm", "model.sigma_reparam=true", "model.lm.seq_len=16").train()
    checkpointed = build(
        "model.family=lm", "model.sigma_reparam=true", "model.lm.seq_len=16"
    ).train()
    apply_activation_checkpointing(checkpointed)
    tokens = torch.randint(0, 256, (2, 16))
    for model in (plain, checkpointed):
        model(tokens).square().mean().backward()
    u_plain = {n: b for n, b in plain.named_buffers() if n.endswith(".u")}
    u_ckpt = {
        n.replace("_checkpoint_wrapped_module.", ""): b
        for n, b in checkpointed.named_buffers()
        if n.endswith(".u")
    }
    assert u_plain.keys() == u_ckpt.keys() and all(
        torch.equal(u_plain[n], u_ckpt[n]) for n in u_plain
    )
    grads = {
        n.replace("_checkpoint_wrapped_module.", ""): p.grad
        for n, p in checkpointed.named_parameters()
    }
    for n, p in plain.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7)
