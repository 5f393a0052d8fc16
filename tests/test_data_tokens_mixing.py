"""Packed token sequences with document boundaries, token budgets, weighted mixing (resumable)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipeline import IGNORE_INDEX, DataConfig, build_loader
from data_pipeline.order import Mixture, block_counts
from data_pipeline.sources import packed_text, synthetic_images
from data_pipeline.text import EOS_ID, decode_bytes, pack_documents
from data_pipeline.writers import write_splits

os.environ.setdefault("OMP_NUM_THREADS", "1")
DOCS = ["héllo world", "a", "the quick brown fox jumps over the lazy dog " * 3, "zz", "end."]


def test_packing_keeps_every_token_and_marks_documents():
    seqs = list(pack_documents(DOCS, seq_len=15))
    flat = np.concatenate([s["tokens"] for s in seqs])
    stream = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), EOS_ID) for d in DOCS])
    assert all(len(s["tokens"]) == 16 for s in seqs)
    assert np.array_equal(flat, stream[: len(flat)])  # only the last partial sequence is dropped
    assert len(stream) - len(flat) < 16
    for s in seqs:
        starts = s["doc_starts"]
        assert starts[0] == 0
        after_eos = np.flatnonzero(s["tokens"][:-1] == EOS_ID) + 1
        assert set(after_eos.tolist()) <= set(starts.tolist())
    assert decode_bytes(flat[:12]) == "héllo world"


@pytest.fixture(scope="module")
def token_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tokens")
    docs = [f"document number {i} " + "x" * (i % 23) for i in range(300)]
    samples, meta = packed_text(iter(docs), seq_len=32, val_fraction=0.1, name="t")
    write_splits(samples, str(root / "wds"), "wds", samples_per_shard=20, meta=meta)
    samples, meta = packed_text(iter(docs), seq_len=32, val_fraction=0.1, name="t")
    write_splits(samples, str(root / "mds"), "mds", samples_per_shard=20, meta=meta)
    return str(root)


@pytest.mark.parametrize("fmt", ["wds", "mds"])
@pytest.mark.parametrize("mode", ["none", "position_ids", "doc_ids"])
def test_token_batches_and_boundaries(token_data, fmt, mode):
    cfg = DataConfig(format=fmt, train_url=f"{token_data}/{fmt}/train", global_batch_size=4,
                     num_workers=0, packing_boundaries=mode)
    batch = next(iter(build_loader(cfg, 0, 1)))
    tokens, targets = batch["tokens"], batch["targets"]
    assert tokens.shape == targets.shape == (4, 32) and tokens.dtype == targets.dtype
    valid = targets != IGNORE_INDEX
    assert np.array_equal(tokens[:, 1:][valid[:, :-1]], targets[:, :-1][valid[:, :-1]])
    if mode == "none":
        assert set(batch) == {"tokens", "targets", "sample_id"} and bool(valid.all())
        return
    pos = batch["position_ids"].numpy()
    for row in range(4):
        resets = np.flatnonzero(pos[row] == 0)
        assert resets[0] == 0
        # a new document starts right after each EOS; the EOS target (next doc) is masked
        eos = np.flatnonzero(tokens[row].numpy() == EOS_ID)
        assert set((eos + 1)[eos + 1 < 32].tolist()) <= set(resets.tolist())
        assert np.all(targets[row].numpy()[eos] == IGNORE_INDEX)
        assert np.all(np.diff(pos[row])[np.diff(pos[row]) != 1] < 0)
    if mode == "doc_ids":
        doc = batch["doc_ids"].numpy()
        assert np.array_equal(doc, np.cumsum(pos == 0, axis=1) - 1)


def test_token_budget_trains_exactly_k_tokens(token_data):
    cfg = DataConfig(format="wds", train_url=f"{token_data}/wds/train", global_batch_size=4,
                     num_workers=2, budget_tokens=4 * 32 * 7 + 100)
    per_rank = [list(build_loader(cfg, r, 2, grad_accum=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 7 * 2  # 7 steps x 2 micro-batches
    assert sum(b["tokens"].numel() for batches in per_rank for b in batches) == 7 * 4 * 32


def test_block_counts_are_exact():
    assert block_counts([0.7, 0.2, 0.1], 10).tolist() == [7, 2, 1]
    assert block_counts([1, 1, 1], 1024).sum() == 1024
    with pytest.raises(ValueError):
        block_counts([0, 0], 8)


def test_mixture_is_a_partition_with_exact_proportions():
    mix = Mixture([3.0, 1.0], seed=1, block=64)
    which, inner = mix.locate(np.arange(640))
    assert (which == 0).sum() == 480 and (which == 1).sum() == 160
    for d in (0, 1):  # each dataset's positions are 0, 1, 2, ... with no gaps or repeats
        assert sorted(inner[which == d].tolist()) == list(range(int((which == d).sum())))
    again = Mixture([3.0, 1.0], seed=1, block=64).locate(np.arange(320, 640))
    assert np.array_equal(again[0], which[320:]) and np.array_equal(again[1], inner[320:])


@pytest.fixture(scope="module")
def two_image_sets(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("mix")
    for name, n in (("a", 60), ("b", 25)):
        samples, meta = synthetic_images(n, size=4, channels=3, seed=len(name) + n)
        write_splits(samples, str(root / name), "wds", samples_per_shard=10, meta=meta)
    return f"{root}/a/train", f"{root}/b/train"


def test_mixing_weights_and_resume(two_image_sets):
    a, b = two_image_sets
    cfg = DataConfig(format="wds", mixture={a: 0.75, b: 0.25}, global_batch_size=8, num_workers=2,
                     mixture_block=16)
    full = np.concatenate([x["sample_id"].numpy() for x in _take(build_loader(cfg, 0, 1), 20)])
    from_b = full >= 60  # global ids: dataset a first (sorted by URL), then b
    assert from_b.sum() == 40  # exactly a quarter of 160
    assert sorted(full[~from_b][:60].tolist()) == list(range(60))  # a's first epoch, complete
    # b (25 samples) cycled through its epochs: each epoch a permutation
    assert sorted(full[from_b][:25].tolist()) == list(range(60, 85))
    loader = build_loader(cfg, 0, 1)
    head = np.concatenate([x["sample_id"].numpy() for x in _take(loader, 9)])
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = [build_loader(cfg, r, 2) for r in range(2)]
    for ld in resumed:
        ld.load_state_dict(state)
    tails = [_take(ld, 11) for ld in resumed]
    tail = np.concatenate([np.concatenate([tails[0][k]["sample_id"], tails[1][k]["sample_id"]])
                           for k in range(11)])
    assert np.array_equal(np.concatenate([head, tail]), full)
    with pytest.raises(ValueError, match="weights"):
        build_loader(DataConfig(format="wds", mixture={a: 0.5, b: 0.5}, global_batch_size=8),
                     0, 1).load_state_dict(state)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_memory_loader_honours_budget():
    cfg = DataConfig(format="memory", name="synthetic_tokens", global_batch_size=8, seq_len=16,
                     budget_tokens=8 * 16 * 3 + 5)
    assert len(list(build_loader(cfg, 0, 2))) == 3
