"""The one step function: the trainer and the muP tools train identically through it."""

from __future__ import annotations

import pytest
import torch

from data_pipeline import build_loader
from pretrain.config import load_config
from pretrain.mup.runner import build, setup, train_steps
from pretrain.run_dir import read_metrics
from pretrain.step import DataExhausted, train_step
from tests.conftest import REPO, TINY
from tests.test_checkpoint_commit import run_inprocess

OVERRIDES = ["schedule.steps=4", "optim.grad_accum=2"]


def tiny_config(run_dir):
    overrides = [*TINY, "parallel.backend=single", f"run.dir={run_dir}", *OVERRIDES]
    return load_config(REPO / "configs/vit_digits.yaml", overrides)


def test_mup_runner_trains_bitwise_like_the_trainer(tmp_path):
    run_inprocess(tmp_path / "run", *OVERRIDES)
    trainer = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    cfg = tiny_config(tmp_path / "unused")
    env = setup(cfg)
    runner = train_steps(cfg, env, build(cfg, env, cfg.run.seed), 4)
    assert len(trainer) == 4 and runner == trainer  # same lr, same batches, same float ops


def test_exhausted_data_is_signalled_before_any_update(tmp_path):
    cfg = tiny_config(tmp_path / "unused")
    env = setup(cfg)
    engine = build(cfg, env, seed=0)
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    one_batch = iter([next(iter(build_loader(cfg.data, env.rank, env.world_size, "train")))])
    with pytest.raises(DataExhausted) as e:  # grad_accum=2 needs two micro-batches
        train_step(engine, one_batch, 3, cfg.optim.lr, cfg.schedule, cfg.optim.grad_accum)
    assert e.value.step == 3
    after = engine.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
