"""Multi-process behaviour through the real CLI under torchrun (gloo, CPU)."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import latest_complete, read_model_tensors
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, TINY, kill_run_at_step, run_train, subprocess_env, train_cmd
from tests.train_runs_worker import Run, RunBatch

pytestmark = pytest.mark.slow

RECIPE = "configs/vit_digits.yaml"
BACKEND_NPROC = {"single": 0, "ddp": 2, "fsdp2": 2, "fsdp2-async": 2}
FOLLOW = [*TINY, "schedule.steps=8", "checkpoint.every_steps=0"]


def sigkill_common(backend: str) -> list[str]:
    return [*TINY, "schedule.steps=40", "checkpoint.every_steps=3", "checkpoint.keep_last=2",
            f"parallel.backend={backend.removesuffix('-async')}",
            f"checkpoint.async_save={str(backend.endswith('-async')).lower()}"]


RESHARD = [*TINY, "schedule.steps=20", "checkpoint.every_steps=10", "checkpoint.keep_last=5",
           "checkpoint.save_at_end=false"]
RESHARD_ON = {"single": 0, "fsdp2": 3}  # backend -> ranks the 2-rank checkpoint continues on
AGREE = {"every-step": [], "every-5-steps": ["logging.every_steps=7",
                                             "checkpoint.agree_every_steps=5"]}


def sigterm_common(agree: str) -> list[str]:
    return [*TINY, "schedule.steps=60", "checkpoint.every_steps=0", "parallel.backend=fsdp2",
            *AGREE[agree]]


# The uninterrupted references and other runs the tests only read: one launch per world size
# (tests/train_runs_worker.py); the runs a test interrupts are launched by the CLI, alone.
BATCH = RunBatch({
    "follow_single": Run(0, RECIPE, (*FOLLOW, "parallel.backend=single")),
    "follow_fsdp2": Run(2, RECIPE, (*FOLLOW, "parallel.backend=fsdp2")),
    **{f"sigkill_{backend}": Run(nproc, RECIPE, tuple(sigkill_common(backend)))
       for backend, nproc in BACKEND_NPROC.items()},
    "reshard_ref": Run(2, RECIPE, (*RESHARD, "parallel.backend=fsdp2")),
    **{f"reshard_{backend}": Run(nproc, RECIPE, (*RESHARD, f"parallel.backend={backend}"),
                                 copy=("reshard_ref", "checkpoints/step_00000010"))
       for backend, nproc in RESHARD_ON.items()},
    **{f"sigterm_{agree}": Run(2, RECIPE, tuple(sigterm_common(agree))) for agree in AGREE},
})


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Path:
    return BATCH.start(request, tmp_path_factory.mktemp("distributed_runs"), REPO,
                       subprocess_env())


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return read_model_tensors(latest_complete(run_dir / "checkpoints"))


@BATCH.needs("follow_single", "follow_fsdp2")
def test_fsdp2_two_ranks_follows_single_process_trajectory(runs):
    """Same global batch: 2-rank FSDP2 and one process compute the same loss at every step."""
    single, fsdp2 = train_losses(runs / "follow_single"), train_losses(runs / "follow_fsdp2")
    assert sorted(single) == sorted(fsdp2) == list(range(1, 9))
    for step in single:
        assert fsdp2[step] == pytest.approx(single[step], rel=1e-4, abs=1e-5), step


def resumed_from(proc: subprocess.CompletedProcess) -> int:
    """The step a run reports resuming from (it logs one line when it does)."""
    match = re.search(r"resumed from \S+ at step (\d+)", proc.stderr)
    assert match, "the run did not resume from a checkpoint"
    return int(match.group(1))


@pytest.mark.parametrize("backend", list(BACKEND_NPROC))
@BATCH.needs(*(f"sigkill_{backend}" for backend in BACKEND_NPROC))
def test_exact_resume_after_sigkill_is_bitwise(runs, tmp_path, backend):
    """The reference ran in the batch, the victim is killed and resumed by CLI launches of
    its own: bitwise equal also shows that batched runs end where lone ones do."""
    nproc = BACKEND_NPROC[backend]
    common = sigkill_common(backend)
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
    ref, resumed = final_weights(runs / f"sigkill_{backend}"), final_weights(victim)
    assert ref.keys() == resumed.keys()
    mismatched = [k for k in ref if not torch.equal(ref[k], resumed[k])]
    assert not mismatched, f"killed at step {killed_at} (seed {seed}): {mismatched[:5]} differ"


@BATCH.needs("reshard_ref", *(f"reshard_{backend}" for backend in RESHARD_ON))
def test_checkpoint_from_two_ranks_resumes_on_one_and_three(runs):
    """A 2-rank FSDP2 checkpoint at step 10 continues on 1 rank and on 3 ranks like the original."""
    ref_losses = train_losses(runs / "reshard_ref")
    assert sorted(ref_losses) == list(range(1, 21))
    for backend, nproc in RESHARD_ON.items():
        losses = train_losses(runs / f"reshard_{backend}")
        assert sorted(losses) == list(range(11, 21)), "must continue from step 11, not from scratch"
        for step in losses:
            assert losses[step] == pytest.approx(ref_losses[step], rel=1e-3), (backend, nproc, step)


@pytest.mark.parametrize("agree", list(AGREE))
@BATCH.needs(*(f"sigterm_{agree}" for agree in AGREE))
def test_sigterm_checkpoints_the_agreed_step_and_resume_is_exact(runs, tmp_path, agree):
    """Preemption: SIGTERM to torchrun reaches every rank; they agree on a step, save, exit; the
    resumed run ends bitwise-equal to an uninterrupted one. Also when the ranks agree only at
    log steps and every 5 steps (no per-step collective for the flags)."""
    common = sigterm_common(agree)
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
    ref, resumed = final_weights(runs / f"sigterm_{agree}"), final_weights(victim)
    assert ref.keys() == resumed.keys()
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
