"""Document-masked attention through FlexAttention block masks equals the dense boolean mask
(the reference), and the LM keeps the dense mask where FlexAttention cannot train (CPU)."""

from __future__ import annotations

import warnings

import torch

from pretrain.models import build_model
from pretrain.models.blocks import Attention, document_block_mask
from pretrain.models.config import ModelConfig
from pretrain.models.lm import document_causal_mask


def packed_doc_ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Random document boundaries per row, including one-token documents."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.rand(batch, seq, generator=g) < 0.08
    starts[:, 0] = True
    starts[0, 5:7] = True
    return starts.long().cumsum(dim=1)


@torch.no_grad()
def test_block_mask_attention_equals_the_dense_mask():
    torch.manual_seed(0)
    cfg = ModelConfig(family="lm", width=32, num_heads=4)
    attn = Attention(cfg, causal=True).eval()
    doc_ids = packed_doc_ids(2, 160)  # not a multiple of FlexAttention's 128-token blocks
    x = torch.randn(2, 160, 32)
    dense = attn(x, document_causal_mask(doc_ids))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "called without torch.compile()": fine on the CPU
        flex = attn(x, document_block_mask(doc_ids))
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_the_lm_uses_the_dense_mask_on_the_cpu():
    model = build_model(ModelConfig(family="lm", width=32, depth=1, num_heads=4), seed=0)
    mask = model.document_mask(packed_doc_ids(2, 16))
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    assert mask.shape == (2, 1, 16, 16)
