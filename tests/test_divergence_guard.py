"""Divergence guard: a loss that turns NaN at step k fails the run there (fail) or is skipped and
counted (skip), with a bound on consecutive skips. NaN is injected by a forward hook on the model
(a global module hook: the trainer builds the model itself)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pretrain.agreement import Diverged
from pretrain.checkpoint import list_checkpoints, read_model_tensors
from pretrain.models.vit import ViT
from pretrain.run_dir import read_metrics, read_status
from tests.test_checkpoint_commit import run_inprocess
from tests.test_device_groups import run_workers

COMMON = ("schedule.steps=12", "checkpoint.every_steps=2", "checkpoint.keep_last=10",
          "checkpoint.agree_every_steps=4", "logging.every_steps=100")


@contextlib.contextmanager
def nan_loss_at(steps: set[int]):
    """The model's output becomes NaN in the training forwards of these 1-based steps."""
    seen = {"forwards": 0}

    def hook(module, args, output):
        if module.training and isinstance(module, ViT):  # FSDP2 subclasses it in place
            seen["forwards"] += 1
            if seen["forwards"] in steps:
                return output * float("nan")
        return output

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_fail_policy_ends_the_run_at_the_bad_step_with_nothing_saved_after_it(tmp_path):
    run_dir = tmp_path / "run"
    with nan_loss_at({5}), pytest.raises(Diverged, match="at step 5"):
        run_inprocess(run_dir, *COMMON)
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["step"] == 5, status
    assert "step 5" in status["error"]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == [
        "step_00000002", "step_00000004"]


def test_skip_policy_skips_the_updates_and_counts_them(tmp_path):
    run_dir = tmp_path / "run"
    with nan_loss_at({5, 6}):
        result = run_inprocess(run_dir, *COMMON, "optim.on_nonfinite=skip",
                               "optim.max_consecutive_skips=2")
    assert result["step"] == 12 and read_status(run_dir)["state"] == "completed"
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert train[-1]["skipped_steps"] == 2
    ckpts = run_dir / "checkpoints"
    before = read_model_tensors(ckpts / "step_00000004")
    after = read_model_tensors(ckpts / "step_00000006")
    assert all(torch.equal(before[k], after[k]) for k in before)  # steps 5, 6: no update at all
    final = read_model_tensors(ckpts / "step_00000012")
    assert all(torch.isfinite(v).all() for v in final.values())
    assert not all(torch.equal(after[k], final[k]) for k in after)  # training went on


def test_skip_policy_fails_beyond_the_consecutive_bound(tmp_path):
    run_dir = tmp_path / "run"
    with nan_loss_at({5, 6, 7}), pytest.raises(Diverged, match="3 consecutive"):
        run_inprocess(run_dir, *COMMON, "optim.on_nonfinite=skip", "optim.max_consecutive_skips=2")
    assert read_status(run_dir)["state"] == "failed"
    assert list_checkpoints(run_dir / "checkpoints")[-1].name == "step_00000006"


@pytest.mark.slow
def test_skip_policy_on_two_fsdp2_ranks(tmp_path):
    """The skip decision is the same on every rank (loss and grad norm are global), so the
    sharded update is skipped everywhere and the ranks stay in step."""
    seen = run_workers("skip_fsdp2", tmp_path)
    assert seen[0] == seen[1] == {"state": "completed", "skipped_steps": 2, "unchanged": True}
