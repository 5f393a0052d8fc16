"""The launcher on a real Slurm cluster (two slurmd on localhost), with a tiny gloo program.

tests/slurm_worker.py keeps the trainer's run-directory contract (signal -> agree -> save ->
"preempted" -> exit 0; resume from its saved state), so these tests exercise the rendered sbatch
script, srun, the torchrun rendezvous on NodeAddr, signal delivery and requeue on their own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from slurm_cluster import REPO, cluster, job_log, status_step, wait_job, wait_until

from launch.slurm import JobSpec, SlurmConfig, submit

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
WORKER = str(REPO / "tests" / "slurm_worker.py")


@pytest.fixture(scope="module")
def slurm():
    yield from cluster()


def expected_total(steps: int, world: int) -> float:
    return float(sum(step * 10 * world + sum(range(world)) for step in range(steps)))


def worker_job(run_dir: Path, steps: int, step_seconds: float, **slurm) -> str:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = SlurmConfig(nodes=2, time="10", env={"OMP_NUM_THREADS": "1"}, **slurm)
    spec = JobSpec(run_dir=run_dir, recipe=run_dir / "unused.yaml", slurm=cfg,
                   entry=[WORKER, str(run_dir), str(steps), str(step_seconds), "5"])  # fmt: skip
    return submit(spec)


def starts(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "starts.jsonl").read_text().splitlines()]


def test_two_node_torchrun_job(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "gloo"
    job = worker_job(run_dir, steps=6, step_seconds=0)
    info = wait_job(job, run_dir)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED", log
    [start] = starts(run_dir)
    assert start["world"] == 2 and sorted(start["nodes"]) == ["n1", "n2"], start
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["last_loss"] == expected_total(6, 2)
    assert "rendezvous at 127.0.0.1:" in log  # NodeAddr of n1, not the name "n1"


def preempt_and_resume(run_dir: Path, job: str, send: list[str], signum: int) -> None:
    wait_until(lambda: status_step(run_dir) >= 3, "training to reach step 3", run_dir)
    subprocess.run(send + [job], check=True)
    info = wait_job(job, run_dir)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED", log
    assert int(info["Restarts"]) == 1, log
    first, second = starts(run_dir)
    assert (first["restart"], first["start_step"]) == (0, 0)
    assert second["restart"] == 1 and 3 <= second["start_step"] < 40, log
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["step"] == 40
    assert status["signal"] == signum and status["restarts"] == 1
    assert status["last_loss"] == expected_total(40, 2)  # no step skipped or repeated
    assert "requeue" in log


def test_warning_signal_checkpoints_requeues_and_resumes(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "usr1"
    job = worker_job(run_dir, steps=40, step_seconds=0.25)
    # What Slurm does `signal_seconds` before the limit: SIGUSR1 to every process of the step.
    preempt_and_resume(run_dir, job, ["scancel", "--signal=USR1"], signum=10)
    assert "run state: preempted" in job_log(run_dir)


def test_sigterm_preemption_requeues_and_resumes(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "term"
    job = worker_job(run_dir, steps=40, step_seconds=0.25, signal_seconds=0)
    # Preemption with PreemptMode=REQUEUE: SIGTERM to the steps and the batch shell, no warning.
    preempt_and_resume(run_dir, job, ["scontrol", "requeue"], signum=15)


def test_restart_limit_stops_requeueing(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "limit"
    job = worker_job(run_dir, steps=40, step_seconds=0.25, max_restarts=0)
    wait_until(lambda: status_step(run_dir) >= 2, "training to reach step 2", run_dir)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    info = wait_job(job, run_dir)
    assert info["JobState"] == "FAILED" and int(info["Restarts"]) == 0, job_log(run_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    assert "restart limit (0) reached" in job_log(run_dir)
