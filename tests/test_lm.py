"""Decoder LM: shapes, causality, packed documents, FLOPs; the packed byte-level text loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from data_pipeline import build_loader
from data_pipeline.config import DataConfig
from data_pipeline.text_memory import (
    EOS,
    IGNORE_INDEX,
    load_documents,
    pack_documents,
    split_documents,
)
from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.models.lm import lm_loss
from pretrain.models.lm_generate import generate

SMALL = [
    "model.family=lm",
    "model.width=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.lm.seq_len=24",
]


def lm(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(load_config(None, [*SMALL, *overrides]).model)
    return model.eval()


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model.lm.tie_embeddings=true", "model.bias=false", "model.mlp=gelu"),
        (
            "model.norm=rmsnorm",
            "model.norm_placement=peri",
            "model.qk_norm=true",
            "model.sigma_reparam=true",
        ),
    ],
)
def test_forward_backward_shapes_and_dtypes(overrides):
    model = lm(*overrides).train()
    tokens = torch.randint(0, 256, (3, 24))
    logits = model(tokens)
    assert logits.shape == (3, 24, 256) and logits.dtype == torch.float32
    targets = torch.randint(0, 256, (3, 24))
    targets[0, :5] = IGNORE_INDEX
    loss, stats = lm_loss(model, {"tokens": tokens, "targets": targets})
    loss.backward()
    assert int(stats["count"]) == 3 * 24 - 5
    assert loss.item() == pytest.approx(stats["loss_sum"].item() / (3 * 24 - 5))
    assert all(p.grad is not None for p in model.parameters())
    if "model.lm.tie_embeddings=true" in overrides:
        assert model.head is None and "head.weight" not in dict(model.named_parameters())


@pytest.mark.parametrize("packed", [False, True])
def test_causality_changing_a_later_token_leaves_earlier_logits(packed):
    model = lm()
    tokens = torch.randint(1, 256, (2, 24))
    kwargs = {"doc_ids": (torch.arange(24) >= 10).long().expand(2, 24)} if packed else {}
    with torch.no_grad():
        before = model(tokens, **kwargs)
        for t in (0, 9, 17, 22):
            changed = tokens.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % 256
            after = model(changed, **kwargs)
            assert torch.equal(after[:, : t + 1], before[:, : t + 1]), t
            assert not torch.allclose(after[:, t + 1], before[:, t + 1])


def test_packed_documents_give_the_loss_of_separate_documents():
    docs = [b"The if statement.", b"while loops", b"Assignment statements rebind names."]
    stream_len = sum(len(d) + 1 for d in docs)
    model = lm(f"model.lm.seq_len={stream_len - 1}")
    row = {k: torch.from_numpy(v) for k, v in pack_documents(docs, stream_len - 1).items()}
    assert row["tokens"].shape == (1, stream_len - 1)
    with torch.no_grad():
        _, packed = lm_loss(model, row)
        sums, count = 0.0, 0
        for doc in docs:
            seq = torch.tensor(list(doc) + [EOS])[None]
            _, alone = lm_loss(model, {"tokens": seq[:, :-1], "targets": seq[:, 1:]})
            sums, count = sums + alone["loss_sum"].item(), count + int(alone["count"])
    assert int(packed["count"]) == count == stream_len - len(docs)
    assert packed["loss_sum"].item() == pytest.approx(sums, rel=1e-5)
    # Without the boundaries the documents see each other: the loss changes.
    with torch.no_grad():
        _, leaky = lm_loss(model, {"tokens": row["tokens"], "targets": row["targets"]})
    assert leaky["loss_sum"].item() != pytest.approx(sums, rel=1e-4)


def test_flops_per_sample_matches_flop_counter():
    for overrides in ((), ("model.mlp=gelu", "model.lm.tie_embeddings=true")):
        model = lm("model.width=48", "model.depth=3", "model.num_heads=4", *overrides)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.randint(0, 256, (1, 24)))
        assert model.flops_per_sample() == 3 * counter.get_total_flops(), overrides


def test_greedy_generation_follows_the_argmax_chain():
    model = lm()
    prompt = list(b"for x in")
    out = generate(model, prompt, 6, top_k=1)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor(ids[-24:])[None])[0, -1].argmax()))
    assert out == ids[len(prompt) :]
    g1, g2 = (
        generate(model, prompt, 8, top_k=5, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    )
    assert g1 == g2 and len(g1) <= 8


# ------------------------------------------------------------------ text loader


def text_cfg(**kw) -> DataConfig:
    return DataConfig(
        format="memory",
        name="text",
        seq_len=kw.pop("seq_len", 32),
        global_batch_size=kw.pop("gbs", 8),
        **kw,
    )


def test_packed_rows_respect_document_boundaries():
    loader = build_loader(text_cfg(seq_len=64), 0, 1)
    a = loader.source.arrays
    assert a["tokens"].shape[1] == 64 and a["tokens"].min() >= 0 and a["tokens"].max() < 256
    valid = a["targets"] != IGNORE_INDEX
    # A target is ignored exactly where an EOS ends a document inside the row's window.
    assert np.array_equal(~valid, a["tokens"] == EOS)
    np.testing.assert_array_equal(
        a["targets"][:-1, -1][valid[:-1, -1]], a["tokens"][1:, 0][valid[:-1, -1]]
    )
    starts = np.diff(a["doc_ids"], axis=1) == 1
    assert np.all(a["position_ids"][:, 1:][starts] == 0) and np.all(a["position_ids"][:, 0] == 0)
    assert np.all(np.diff(a["doc_ids"], axis=1) >= 0)
    names = dict(load_documents())
    text = bytes(a["tokens"][:4].reshape(-1).astype(np.uint8))
    assert any(body[:40] in text for body in names.values())


def test_text_loader_resumes_exactly_and_elastically():
    cfg = text_cfg()
    one = iter(build_loader(cfg, 0, 1))
    reference = [next(one)["sample_id"] for _ in range(5)]
    # Two steps on two ranks, then the position moves to four ranks: the global order goes on.
    ranks = [build_loader(cfg, r, 2) for r in range(2)]
    its = [iter(x) for x in ranks]
    for step in range(2):
        assert torch.equal(torch.cat([next(it)["sample_id"] for it in its]), reference[step])
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict()
    resumed = [build_loader(cfg, r, 4) for r in range(4)]
    for loader in resumed:
        loader.load_state_dict(state)
    its = [iter(x) for x in resumed]
    for step in range(2, 5):
        batches = [next(it) for it in its]
        assert torch.equal(torch.cat([b["sample_id"] for b in batches]), reference[step])
        assert set(batches[0]) == {"tokens", "targets", "position_ids", "doc_ids", "sample_id"}
    with pytest.raises(ValueError, match="fingerprint"):
        build_loader(text_cfg(seq_len=16), 0, 1).load_state_dict(state)


def test_text_eval_loader_covers_val_once_with_padding():
    cfg = text_cfg(gbs=6)
    loaders = [build_loader(cfg, r, 2, "val") for r in range(2)]
    batches = [list(x) for x in loaders]
    assert len(batches[0]) == len(batches[1])
    ids = torch.cat([b["sample_id"] for rank in batches for b in rank])
    real = ids[ids >= 0]
    assert sorted(real.tolist()) == list(range(loaders[0].num_samples))
    for rank in batches:
        for b in rank:
            assert bool((b["targets"][b["sample_id"] < 0] == IGNORE_INDEX).all())
    docs = load_documents()
    train, val = (split_documents(docs, s, cfg.val_fraction) for s in ("train", "val"))
    assert train and val and not set(train) & set(val) and len(set(train + val)) == len(docs)
