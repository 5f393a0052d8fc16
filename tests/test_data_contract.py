"""The loader contract every source keeps (`data_pipeline/contract.py`): budgets stop at whole
optimizer steps on every rank and the budgeted stream is the head of the endless one; loaders
offer state, metrics and length; states saved by earlier versions still resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_pipeline import DataConfig, build_loader
from data_pipeline.contract import EvalLoader, TrainLoader

os.environ.setdefault("OMP_NUM_THREADS", "1")
GLOBAL_BATCH = 8
MEMORY_SOURCES = {
    "digits": dict(name="digits"),
    "digits_translated": dict(name="digits_translated"),
    "synthetic_tokens": dict(name="synthetic_tokens", seq_len=16),
    "text": dict(name="text", seq_len=32),
}


def memory_cfg(source: str, **kw) -> DataConfig:
    return DataConfig(format="memory", global_batch_size=GLOBAL_BATCH, seed=3,
                      **MEMORY_SOURCES[source], **kw)


def ids_by_rank(cfg: DataConfig, world: int, grad_accum: int, limit: int) -> list[list[np.ndarray]]:
    """Up to `limit` micro-batches of sample ids per rank (fewer if the loader stops)."""
    out = []
    for rank in range(world):
        it, ids = iter(build_loader(cfg, rank, world, "train", grad_accum)), []
        for _ in range(limit):
            try:
                ids.append(next(it)["sample_id"].numpy())
            except StopIteration:
                break
        out.append(ids)
    return out


@pytest.mark.parametrize("source", sorted(MEMORY_SOURCES))
def test_sample_budget_stops_at_whole_steps_on_every_rank(source):
    steps, world, accum = 5, 2, 2
    budgeted = ids_by_rank(memory_cfg(source, budget_samples=steps * GLOBAL_BATCH + 3), world,
                           accum, limit=3 * steps * accum)
    endless = ids_by_rank(memory_cfg(source), world, accum, limit=steps * accum)
    for rank in range(world):
        assert len(budgeted[rank]) == steps * accum  # 5 whole steps of 2 micro-batches, no more
        assert all(np.array_equal(a, b) for a, b in zip(budgeted[rank], endless[rank]))


def test_token_budget_of_the_text_corpus_counts_its_tokens():
    seq_len = MEMORY_SOURCES["text"]["seq_len"]
    cfg = memory_cfg("text", budget_tokens=3 * GLOBAL_BATCH * seq_len + seq_len - 1)
    assert len(ids_by_rank(cfg, 1, 1, limit=10)[0]) == 3


@pytest.mark.parametrize("source", sorted(MEMORY_SOURCES))
def test_every_source_serves_the_protocols(source):
    cfg = memory_cfg(source)
    train, val = build_loader(cfg, 0, 2), build_loader(cfg, 0, 2, "val")
    assert isinstance(train, TrainLoader) and isinstance(val, EvalLoader)
    next(iter(train))
    assert train.metrics()["data/epoch"] == GLOBAL_BATCH / train.samples_per_epoch
    assert len(list(val)) == len(val)


@pytest.mark.parametrize("source", sorted(MEMORY_SOURCES))
def test_a_state_saved_before_the_shared_loader_still_resumes(source):
    """In-memory states used to be {consumed, num_samples, seed} (+ fingerprint for the text)."""
    cfg = memory_cfg(source)
    ran = build_loader(cfg, 0, 1)
    it = iter(ran)
    for _ in range(3):
        next(it)
    want = next(it)["sample_id"]
    identity = {k: v for k, v in ran.state_dict().items() if k in ("num_samples", "seed")}
    old_state = {"consumed": 3 * GLOBAL_BATCH, **identity}
    resumed = build_loader(cfg, 0, 1)
    resumed.load_state_dict(json.loads(json.dumps(old_state)))
    assert torch.equal(next(iter(resumed))["sample_id"], want)
    with pytest.raises(ValueError, match="seed"):
        resumed.load_state_dict({**old_state, "seed": cfg.seed + 1})


@pytest.mark.parametrize("split", ["train", "val"])
def test_loaders_leave_the_global_rng_alone(split):
    """Starting and reading a loader draws nothing from torch's global RNG: a resumed run starts
    its iterators after restoring the RNG, so any draw would shift the training noise (a DiT
    resumed under FSDP2 stopped being bitwise-equal when in-memory loaders gained a DataLoader)."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loader = build_loader(memory_cfg("digits"), 0, 1, split)
    next(iter(loader))
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
