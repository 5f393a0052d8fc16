import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.config import ModelConfig, ViTConfig
from pretrain.models import build_model, count_params, model_stats


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_forward_backward_shapes(pooling):
    cfg = ModelConfig(
        width=32,
        depth=2,
        num_heads=4,
        vit=ViTConfig(image_size=8, patch_size=2, num_classes=7, pooling=pooling),
    )
    model = build_model(cfg)
    logits = model(torch.randn(5, 1, 8, 8))
    assert logits.shape == (5, 7) and logits.dtype == torch.float32
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_flops_per_sample_matches_flop_counter():
    """Our analytic count equals torch's FLOP counter (3x forward) with attention decomposed."""
    cfg = ModelConfig(width=48, depth=3, num_heads=4, vit=ViTConfig(image_size=8, patch_size=2))
    model = build_model(cfg)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 8, 8))
    assert model.flops_per_sample() == 3 * counter.get_total_flops()


def test_param_counts_and_meta_stats_agree_with_built_model():
    cfg = ModelConfig(width=32, depth=2, num_heads=2)
    model = build_model(cfg)
    stats = model_stats(cfg)
    assert stats["params"] == sum(p.numel() for p in model.parameters()) == count_params(model)
    embedding = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("patch_embed", "pos_embed", "cls_token"))
    )
    assert stats["params_non_embedding"] == stats["params"] - embedding
    assert stats["flops_per_sample"] == model.flops_per_sample()
