"""`digits_translated`, the in-memory task of the muP ViT study: every draw is the source digit at
one offset of a noisy canvas, fresh at every stream position, the same on any world size and after
a resume; the validation set is fixed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_pipeline import DataConfig, build_loader
from data_pipeline.memory import CANVAS, CANVAS_NOISE, VAL_PLACEMENTS, load_arrays

os.environ.setdefault("OMP_NUM_THREADS", "1")
GLOBAL_BATCH = 12


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"format": "memory", "name": "digits_translated",
                         "global_batch_size": GLOBAL_BATCH, "seed": 3, **kw})


def images(loader, steps: int) -> list[np.ndarray]:
    it = iter(loader)
    return [next(it)["image"].numpy() for _ in range(steps)]


def decompose(canvas: np.ndarray, digit: np.ndarray) -> tuple[tuple[int, int], float, float]:
    """The offset where `digit` best explains `canvas`, the residual's std there, and the
    second-best offset's (a canvas that is not that digit plus noise has no clear best)."""
    size = digit.shape[-1]
    errors = {}
    for top in range(CANVAS - size + 1):
        for left in range(CANVAS - size + 1):
            clean = np.full_like(canvas, -1.0)
            clean[:, top : top + size, left : left + size] = digit
            errors[(top, left)] = float((canvas - clean).std())
    ranked = sorted(errors, key=errors.get)
    return ranked[0], errors[ranked[0]], errors[ranked[1]]


def test_draws_are_the_same_on_any_world_size_and_after_a_resume():
    steps = 6
    single = images(build_loader(cfg(), 0, 1, "train"), steps)
    halves = [images(build_loader(cfg(), r, 2, "train"), steps) for r in range(2)]
    for k in range(steps):
        assert np.array_equal(single[k], np.concatenate([halves[0][k], halves[1][k]]))

    loader = build_loader(cfg(), 0, 1, "train")
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))
    resumed = build_loader(cfg(), 0, 1, "train")
    resumed.load_state_dict(state)
    for k, image in enumerate(images(resumed, steps - 3)):
        assert np.array_equal(image, single[3 + k]), f"step {3 + k} differs after the resume"


def test_each_draw_is_its_digit_at_a_fresh_offset_under_noise():
    digits = load_arrays(cfg(), "train")
    n = len(digits["label"])
    loader = build_loader(cfg(global_batch_size=n), 0, 1, "train")
    it = iter(loader)
    epochs = [next(it) for _ in range(2)]  # one batch is one epoch: every id once per batch
    offsets: dict[int, list[tuple[int, int]]] = {}
    for batch in epochs:
        ids = batch["sample_id"].numpy()
        assert sorted(ids.tolist()) == list(range(n))
        assert np.array_equal(batch["label"].numpy(), digits["label"][ids])
        for sample in range(0, n, 40):  # a subset of ids: the search is 25 offsets each
            row = int(np.flatnonzero(ids == sample)[0])
            offset, residual, runner_up = decompose(batch["image"][row].numpy(),
                                                    digits["image"][sample])
            assert residual == pytest.approx(CANVAS_NOISE, rel=0.25)  # the digit, intact, + noise
            assert runner_up > residual * 1.3, "no offset explains the canvas clearly"
            offsets.setdefault(sample, []).append(offset)
    # the same digit drawn at two positions is placed independently: most placements differ
    assert sum(a != b for a, b in offsets.values()) >= 0.7 * len(offsets)
    assert len({o for v in offsets.values() for o in v}) >= 15  # of the 25 offsets


def test_validation_is_fixed_independent_of_the_seed_and_covers_each_digit_several_times():
    held_out = load_arrays(cfg(), "val")
    size = VAL_PLACEMENTS * len(held_out["label"])
    val = [next(iter(build_loader(cfg(seed=s, eval_batch_size=size), 0, 1, "val")))
           for s in (0, 11)]
    assert np.array_equal(val[0]["image"].numpy(), val[1]["image"].numpy())
    labels = val[0]["label"].numpy()
    assert np.array_equal(labels, np.repeat(held_out["label"], VAL_PLACEMENTS))
    copies = val[0]["image"].numpy()[:VAL_PLACEMENTS]  # one digit's placements differ
    assert len({c.tobytes() for c in copies}) == VAL_PLACEMENTS
