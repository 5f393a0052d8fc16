"""Sharded loaders (wds and mds): global order, accounting across ranks/workers, exact and elastic
resume, validation padding, decoded values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_pipeline import IGNORE_INDEX, DataConfig, build_loader
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits

os.environ.setdefault("OMP_NUM_THREADS", "1")
N_TRAIN = 120  # uneven shards of 17 samples: the last one is short
GLOBAL_BATCH = 12  # divisible by 1, 2, 3 ranks and by grad_accum 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shards")
    out = {}
    for fmt in ("wds", "mds"):
        samples, meta = synthetic_images(N_TRAIN + 30, size=4, channels=3, val_fraction=0.2, seed=1)
        # MDS cuts shards by bytes; random 4x4 PNGs are ~90 bytes, so shards hold ~17 samples too
        write_splits(samples, str(root / fmt), fmt, samples_per_shard=17, meta=meta)
        out[fmt] = str(root / fmt)
    return out


def cfg_for(root: str, fmt: str, **kw) -> DataConfig:
    base = dict(format=fmt, train_url=f"{root}/train", val_url=f"{root}/val",
                global_batch_size=GLOBAL_BATCH, num_workers=2, shuffle_window=2, seed=7)
    base.update(kw)
    return DataConfig(**base)


def take(loader, n: int) -> list[np.ndarray]:
    it = iter(loader)
    return [next(it)["sample_id"].numpy() for _ in range(n)]


def global_stream(cfg: DataConfig, world: int, steps: int, states: list | None = None,
                  grad_accum: int = 1) -> np.ndarray:
    """Sample ids of `steps` optimizer steps, ranks interleaved as the global batch is split."""
    per_rank = []
    for rank in range(world):
        loader = build_loader(cfg, rank, world, "train", grad_accum)
        if states is not None:
            loader.load_state_dict(json.loads(json.dumps(states[rank])))
        per_rank.append(take(loader, steps * grad_accum))
    rows = [
        np.concatenate([per_rank[r][k] for r in range(world)]) for k in range(steps * grad_accum)
    ]
    return np.concatenate(rows)


def n_train(root: str) -> int:
    with open(f"{root}/train/manifest.json") as f:
        return sum(s["samples"] for s in json.load(f)["shards"])


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_epoch_covers_every_sample_once_same_order_any_world_size(datasets, fmt):
    root = datasets[fmt]
    n = n_train(root)
    steps = n // GLOBAL_BATCH
    streams = {w: global_stream(cfg_for(root, fmt), w, steps + 1) for w in (1, 2, 3)}
    for w, s in streams.items():
        assert np.array_equal(s, streams[1]), f"world size {w} changed the order"
    epoch = streams[1][:n]
    assert sorted(epoch.tolist()) == list(range(n))
    # the next epoch starts a new permutation of the same ids
    assert set(streams[1][n:].tolist()) <= set(range(n))
    assert not np.array_equal(epoch[:GLOBAL_BATCH], np.arange(GLOBAL_BATCH))


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_worker_count_does_not_change_stream(datasets, fmt):
    root = datasets[fmt]
    a = take(build_loader(cfg_for(root, fmt, num_workers=0), 0, 1), 7)
    b = take(build_loader(cfg_for(root, fmt, num_workers=3), 0, 1), 7)
    assert np.array_equal(np.concatenate(a), np.concatenate(b))


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_exact_resume_equals_uninterrupted(datasets, fmt):
    root = datasets[fmt]
    cfg = cfg_for(root, fmt)
    total = 2 * n_train(root) // GLOBAL_BATCH + 3  # crosses an epoch boundary
    full = global_stream(cfg, 2, total, grad_accum=2)
    cut = int(np.random.default_rng().integers(1, total))
    loaders = [build_loader(cfg, r, 2, "train", grad_accum=2) for r in range(2)]
    head = [take(ld, 2 * cut) for ld in loaders]
    states = [ld.state_dict() for ld in loaders]
    json.dumps(states)  # checkpoints store it as JSON
    assert states[0] == states[1]
    first = np.concatenate([np.concatenate([head[r][k] for r in range(2)]) for k in range(2 * cut)])
    rest = global_stream(cfg, 2, total - cut, states=states, grad_accum=2)
    assert np.array_equal(np.concatenate([first, rest]), full), f"cut at step {cut}"


@pytest.mark.parametrize("fmt", ["wds", "mds"])
@pytest.mark.parametrize("new_world", [3, 1])
def test_elastic_resume_neither_repeats_nor_skips(datasets, fmt, new_world):
    root = datasets[fmt]
    cfg = cfg_for(root, fmt)
    n = n_train(root)
    steps_before = 4
    loaders = [build_loader(cfg, r, 2) for r in range(2)]
    before = np.concatenate([np.concatenate(take(ld, steps_before)) for ld in loaders])
    state = loaders[0].state_dict()
    remaining = n // GLOBAL_BATCH - steps_before
    after = global_stream(cfg, new_world, remaining, states=[state] * new_world)
    seen = np.concatenate([before, after])
    assert sorted(seen.tolist()) == list(
        range(remaining * GLOBAL_BATCH + steps_before * GLOBAL_BATCH)
    )
    assert len(set(seen.tolist())) == len(seen)


def test_state_from_another_dataset_is_refused(datasets):
    loader = build_loader(cfg_for(datasets["wds"], "wds"), 0, 1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="num_samples"):
        build_loader(cfg_for(datasets["wds"], "wds"), 0, 1).load_state_dict(
            {**state, "num_samples": [5]}
        )
    with pytest.raises(ValueError, match="seed"):
        loader.load_state_dict({**state, "seed": 99})


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_validation_pads_to_equal_batches(datasets, fmt):
    root = datasets[fmt]
    cfg = cfg_for(root, fmt, eval_batch_size=8)
    per_rank = [list(build_loader(cfg, r, 2, "val")) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    ids = torch.cat([b["sample_id"] for batches in per_rank for b in batches])
    labels = torch.cat([b["label"] for batches in per_rank for b in batches])
    real = ids[ids >= 0]
    assert sorted(real.tolist()) == list(range(len(real)))
    assert torch.all(labels[ids < 0] == IGNORE_INDEX)
    assert torch.all(labels[ids >= 0] >= 0)


def test_validation_workers_persist_across_evaluations(datasets):
    """Every evaluation is a pass through the same worker processes (starting them costs
    seconds per evaluation on a GPU node); a pass cut short does not leak into the next."""
    import psutil

    loader = build_loader(cfg_for(datasets["wds"], "wds", eval_batch_size=8), 0, 1, "val")
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    first = [b["sample_id"] for b in loader]
    workers = {c.pid for c in me.children(recursive=True)} - before
    assert len(workers) == 2  # data.num_workers, alive after the pass
    next(iter(loader))  # an evaluation cut short (logging.eval_batches)
    second = [b["sample_id"] for b in loader]
    assert {c.pid for c in me.children(recursive=True)} - before == workers
    assert len(first) == len(second) and all(map(torch.equal, first, second))


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_decoded_pixels_and_labels_match_the_source(datasets, fmt):
    samples, _ = synthetic_images(N_TRAIN + 30, size=4, channels=3, val_fraction=0.2, seed=1)
    train = [s for split, s in samples if split == "train"]
    loader = build_loader(cfg_for(datasets[fmt], fmt, num_workers=0), 0, 1)
    batch = next(iter(loader))
    assert batch["image"].shape == (GLOBAL_BATCH, 3, 4, 4) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["sample_id"].dtype == torch.int64
    for row, sid in enumerate(batch["sample_id"].tolist()):
        want = (train[sid]["image"].transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(batch["image"][row].numpy(), want, atol=1e-6)
        assert batch["label"][row].item() == train[sid]["label"]


def test_shuffle_is_windowed_over_shards(datasets):
    """Within a window of 2 shards, a run of samples comes from at most those 2 shards."""
    cfg = cfg_for(datasets["wds"], "wds", shuffle_window=2, num_workers=0)
    ids = np.concatenate(take(build_loader(cfg, 0, 1), 2))[:24]
    assert len(np.unique(ids // 17)) <= 2


def test_budget_stops_at_whole_steps(datasets):
    cfg = cfg_for(datasets["wds"], "wds", budget_samples=5 * GLOBAL_BATCH + 3)
    batches = list(build_loader(cfg, 1, 2))
    assert len(batches) == 5


def test_per_channel_mean_and_std_normalise_each_channel(datasets):
    samples, _ = synthetic_images(N_TRAIN + 30, size=4, channels=3, val_fraction=0.2, seed=1)
    train = [s for split, s in samples if split == "train"]
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    cfg = cfg_for(datasets["wds"], "wds", num_workers=0, image_mean=mean, image_std=std)
    batch = next(iter(build_loader(cfg, 0, 1)))
    for row, sid in enumerate(batch["sample_id"].tolist()[:3]):
        pixels = train[sid]["image"].transpose(2, 0, 1).astype(np.float32) / 255
        want = (pixels - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
        np.testing.assert_allclose(batch["image"][row].numpy(), want, atol=1e-5)
