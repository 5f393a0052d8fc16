"""Trainer options in one process: accumulation, activation checkpointing, compile, metrics."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.checkpoint import latest_complete, read_model_tensors
from pretrain.run_dir import read_metrics
from tests.test_checkpoint_commit import run_inprocess


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return read_model_tensors(latest_complete(run_dir / "checkpoints"))


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    run_inprocess(tmp_path / "full", "schedule.steps=4")
    run_inprocess(tmp_path / "accum", "schedule.steps=4", "optim.grad_accum=3")
    assert losses(tmp_path / "accum") == pytest.approx(losses(tmp_path / "full"), rel=1e-5)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "accum")
    assert all(
        torch.allclose(a[k], b[k], atol=1e-5) for k in a
    )  # Adam amplifies float noise in ~0 grads


def test_activation_checkpointing_recomputes_exactly(tmp_path):
    run_inprocess(tmp_path / "plain", "schedule.steps=3")
    run_inprocess(tmp_path / "ac", "schedule.steps=3", "parallel.activation_checkpointing=true")
    assert losses(tmp_path / "ac") == losses(tmp_path / "plain")
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "ac")
    assert a.keys() == b.keys()  # the wrapper does not leak into checkpoint names
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compiled_blocks_follow_eager(tmp_path):
    run_inprocess(tmp_path / "eager", "schedule.steps=2")
    run_inprocess(tmp_path / "compiled", "schedule.steps=2", "parallel.compile=true")
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


def test_metrics_eval_tensorboard_and_mfu(tmp_path):
    run_dir = tmp_path / "run"
    result = run_inprocess(
        run_dir,
        "schedule.steps=4",
        "logging.eval_every_steps=2",
        "logging.tensorboard=true",
        "logging.peak_tflops=1.0",
    )
    train = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    val = [r for r in read_metrics(run_dir) if r["split"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in val] == [2, 4]
    stats = json.loads((run_dir / "model_stats.json").read_text())
    last = train[-1]
    assert last["samples"] == 4 * 12 and last["flops"] == 4 * 12 * stats["flops_per_sample"]
    assert last["mfu"] == pytest.approx(last["samples_per_s"] * stats["flops_per_sample"] / 1e12)
    assert 0.0 <= val[-1]["accuracy"] <= 1.0 and result["val_loss"] == pytest.approx(
        val[-1]["loss"]
    )

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/samples_per_s",
        "train/mfu",
        "val/loss",
        "val/accuracy",
    } <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_singular_value_logging_matches_the_saved_weights(tmp_path):
    """model.mup.log_singular_values logs every matrix's top singular value at each log step."""
    run_dir = tmp_path / "run"
    run_inprocess(run_dir, "schedule.steps=2", "model.mup.log_singular_values=true")
    sv = [r for r in read_metrics(run_dir) if r["split"] == "sv"]
    assert [r["step"] for r in sv] == [1, 2]
    final = weights(run_dir)
    matrices = {k: v for k, v in final.items() if v.ndim == 2}
    logged = {k: v for k, v in sv[-1].items() if k != "step" and k != "split"}
    assert logged, "no singular values were logged"
    for name, value in logged.items():
        assert value == pytest.approx(
            torch.linalg.matrix_norm(matrices[name], ord=2).item(), rel=1e-4
        ), name
