"""Multi-process behaviour through the real CLI under torchrun (gloo, CPU)."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from pretrain.checkpoint import latest_complete, read_model_tensors
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, TINY, kill_run_at_step, run_train, subprocess_env, train_cmd

pytestmark = pytest.mark.slow

BACKEND_NPROC = {"single": 0, "ddp": 2, "fsdp2": 2, "fsdp2-async": 2}


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return read_model_tensors(latest_complete(run_dir / "checkpoints"))


def test_fsdp2_two_ranks_follows_single_process_trajectory(tmp_path):
    """Same global batch: 2-rank FSDP2 and one process compute the same loss at every step."""
    common = [*TINY, "schedule.steps=8", "checkpoint.every_steps=0"]
    run_train(0, [*common, "parallel.backend=single", f"run.dir={tmp_path / 'single'}"])
    run_train(2, [*common, "parallel.backend=fsdp2", f"run.dir={tmp_path / 'fsdp2'}"])
    single, fsdp2 = train_losses(tmp_path / "single"), train_losses(tmp_path / "fsdp2")
    assert sorted(single) == sorted(fsdp2) == list(range(1, 9))
    for step in single:
        assert fsdp2[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5), step


def resumed_from(proc: subprocess.CompletedProcess) -> int:
    """The step a run reports resuming from (it logs one line when it does)."""
    match = re.search(r"resumed from \S+ at step (\d+)", proc.stderr)
    assert match, "the run did not resume from a checkpoint"
    return int(match.group(1))


@pytest.mark.parametrize("backend", ["single", "ddp", "fsdp2", "fsdp2-async"])
def test_exact_resume_after_sigkill_is_bitwise(tmp_path, backend):
    nproc = BACKEND_NPROC[backend]
    common = [
        *TINY,
        "schedule.steps=40",
        "checkpoint.every_steps=3",
        "checkpoint.keep_last=2",
        f"parallel.backend={backend.removesuffix('-async')}",
        f"checkpoint.async_save={str(backend.endswith('-async')).lower()}",
    ]
    run_train(nproc, [*common, f"run.dir={tmp_path / 'ref'}"])

    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(4, 28)
    killed_at = kill_run_at_step(
        train_cmd(nproc, [*common, f"run.dir={victim}"]), victim, kill_step
    )
    resumed_step = resumed_from(run_train(nproc, [*common, f"run.dir={victim}"]))
    # Step 3's checkpoint was committed before step 4 began; from scratch would also end equal.
    assert 3 <= resumed_step <= killed_at, (resumed_step, killed_at)

    assert read_status(victim)["state"] == "completed"
    ref, resumed = final_weights(tmp_path / "ref"), final_weights(victim)
    assert ref.keys() == resumed.keys()
    mismatched = [k for k in ref if not torch.equal(ref[k], resumed[k])]
    assert not mismatched, f"killed at step {killed_at} (seed {seed}): {mismatched[:5]} differ"


def test_checkpoint_from_two_ranks_resumes_on_one_and_three(tmp_path):
    """A 2-rank FSDP2 checkpoint at step 10 continues on 1 rank and on 3 ranks like the original."""
    common = [
        *TINY,
        "schedule.steps=20",
        "checkpoint.every_steps=10",
        "checkpoint.keep_last=5",
        "checkpoint.save_at_end=false",
    ]
    ref = tmp_path / "ref"
    run_train(2, [*common, "parallel.backend=fsdp2", f"run.dir={ref}"])
    ref_losses = train_losses(ref)
    for nproc, backend in ((0, "single"), (3, "fsdp2")):
        run_dir = tmp_path / f"resume_{backend}_{nproc}"
        shutil.copytree(
            ref / "checkpoints" / "step_00000010", run_dir / "checkpoints" / "step_00000010"
        )
        run_train(nproc, [*common, f"parallel.backend={backend}", f"run.dir={run_dir}"])
        losses = train_losses(run_dir)
        assert sorted(losses) == list(range(11, 21)), "must continue from step 11, not from scratch"
        for step in losses:
            assert losses[step] == pytest.approx(ref_losses[step], rel=1e-3), (backend, nproc, step)


@pytest.mark.parametrize("agree", [[], ["logging.every_steps=7", "checkpoint.agree_every_steps=5"]],
                         ids=["every-step", "every-5-steps"])
def test_sigterm_checkpoints_the_agreed_step_and_resume_is_exact(tmp_path, agree):
    """Preemption: SIGTERM to torchrun reaches every rank; they agree on a step, save, exit; the
    resumed run ends bitwise-equal to an uninterrupted one. Also when the ranks agree only at
    log steps and every 5 steps (no per-step collective for the flags)."""
    common = [*TINY, "schedule.steps=60", "checkpoint.every_steps=0", "parallel.backend=fsdp2",
              *agree]
    run_train(2, [*common, f"run.dir={tmp_path / 'ref'}"])
    victim = tmp_path / "victim"
    proc = subprocess.Popen(
        train_cmd(2, [*common, f"run.dir={victim}"]),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while (
        read_status(victim).get("step", 0) < 10 and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    status = read_status(victim)
    assert status["state"] == "preempted", status
    saved = latest_complete(victim / "checkpoints")
    assert saved is not None and saved.name == f"step_{status['step']:08d}"
    assert resumed_from(run_train(2, [*common, f"run.dir={victim}"])) == status["step"]
    ref, resumed = final_weights(tmp_path / "ref"), final_weights(victim)
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
