"""The launcher on a real Slurm cluster (two slurmd on localhost), with a tiny gloo program.

tests/slurm_worker.py keeps the trainer's run-directory contract (signal -> agree -> save ->
"preempted" -> exit 0; resume from its saved state), so these tests exercise the rendered sbatch
script, srun, the torchrun rendezvous on NodeAddr, signal delivery and requeue on their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY
from slurm_cluster import REPO, cluster, job_log, status_step, wait_job, wait_until

from launch.recipe import apply_overrides, load_recipe, parse_override
from launch.slurm import JobSpec, SlurmConfig, submit
from pretrain.checkpoint import latest_complete, read_model_tensors

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


def test_lost_process_requeues_and_resumes_from_periodic_checkpoint(slurm, tmp_path: Path) -> None:
    """A rank dies without saving (node or process lost): the job requeues itself and resumes
    from the last periodic save. (Signals with the real trainer are tested further below.)"""
    run_dir = tmp_path / "lost"
    job = worker_job(run_dir, steps=30, step_seconds=0.25)
    wait_until(lambda: status_step(run_dir) >= 8, "training to reach step 8", run_dir)
    os.kill(int((run_dir / "pid_rank1").read_text()), signal.SIGKILL)
    killed_at = status_step(run_dir)
    info = wait_job(job, run_dir)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log
    assert "run state: running" in log and "requeueing job" in log
    first, second = starts(run_dir)
    assert second["restart"] == 1 and second["start_step"] % 5 == 0, second  # periodic save
    assert 5 <= second["start_step"] <= killed_at + 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed" and status["last_loss"] == expected_total(30, 2)


def test_restart_limit_stops_requeueing(slurm, tmp_path: Path) -> None:
    run_dir = tmp_path / "limit"
    job = worker_job(run_dir, steps=40, step_seconds=0.25, max_restarts=0)
    wait_until(lambda: status_step(run_dir) >= 2, "training to reach step 2", run_dir)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    info = wait_job(job, run_dir)
    assert info["JobState"] == "FAILED" and int(info["Restarts"]) == 0, job_log(run_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "preempted"
    assert "restart limit (0) reached" in job_log(run_dir)


# ------------------------------------------------------------------ the real trainer via the CLI

STEPS = 160
TRAIN = [*TINY, "parallel.backend=fsdp2", f"schedule.steps={STEPS}", "checkpoint.every_steps=20",
         "checkpoint.keep_last=10"]  # fmt: skip


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pretrain", *args], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, f"pretrain {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def submit_train(run_dir: Path, *flags: str) -> str:
    out = cli("slurm", "submit", "configs/vit_digits.yaml", *TRAIN, f"run.dir={run_dir}",
              "--nodes", "2", "--time", "10", "--env", "OMP_NUM_THREADS=1", *flags)  # fmt: skip
    return re.search(r"submitted job (\d+)", out).group(1)


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    last = latest_complete(run_dir / "checkpoints", warn=False)
    assert last is not None and last.name == f"step_{STEPS:08d}", last
    return read_model_tensors(last)


def assert_same_params(run_dir: Path, reference: Path) -> None:
    ours, ref = final_params(run_dir), final_params(reference)
    assert ours.keys() == ref.keys() and ours
    different = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert not different, f"parameters differ from the uninterrupted run: {different}"


def resumed_step(run_dir: Path) -> int:
    steps = re.findall(r"resumed from \S+ at step (\d+)", job_log(run_dir))
    assert len(steps) == 1, job_log(run_dir)
    return int(steps[0])


@pytest.fixture(scope="module")
def train_jobs(slurm, tmp_path_factory) -> dict[str, tuple[str, Path, int]]:
    """Three 2-node x 1-process FSDP2 runs submitted together with `pretrain slurm submit` (two
    fit on the cluster at once), interrupted mid-training as soon as each gets there:
    reference: uninterrupted;
    usr1: sent the warning signal (what Slurm sends `signal_seconds` before the limit);
    term: no warning signal configured, preempted as Slurm does with PreemptMode=REQUEUE
          (SIGTERM to every process, then requeue) once it has a periodic checkpoint.
    Values: (job id, run dir, step of interest: signal step / last periodic checkpoint)."""
    root = tmp_path_factory.mktemp("train")
    flags = {"reference": [], "usr1": [], "term": ["--signal-seconds", "0"]}
    jobs = {name: (submit_train(root / name, *extra), root / name) for name, extra in flags.items()}
    job, run_dir = jobs["usr1"]
    wait_until(lambda: status_step(run_dir) >= 30, "usr1: step 30", run_dir, 400)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    usr1_at = status_step(run_dir)
    job, run_dir = jobs["term"]
    ckpts = run_dir / "checkpoints"
    wait_until(lambda: latest_complete(ckpts, warn=False) is not None,
               "term: a periodic checkpoint", run_dir, 400)  # fmt: skip
    periodic = int(latest_complete(ckpts, warn=False).name[len("step_") :])
    subprocess.run(["scontrol", "requeue", job], check=True)
    return {"reference": (*jobs["reference"], 0), "usr1": (*jobs["usr1"], usr1_at),
            "term": (*jobs["term"], periodic)}  # fmt: skip


@pytest.fixture(scope="module")
def reference(train_jobs) -> Path:
    job, run_dir, _ = train_jobs["reference"]
    info = wait_job(job, run_dir, timeout=400)
    assert info["JobState"] == "COMPLETED", job_log(run_dir)
    return run_dir


def test_two_node_fsdp2_run_completes(reference: Path) -> None:
    status = json.loads((reference / "status.json").read_text())
    assert (status["state"], status["step"], status["restarts"]) == ("completed", STEPS, 0)
    log = job_log(reference)
    assert "on n[1-2]" in log and "backend fsdp2 on 2 process(es)" in log, log
    recipe = yaml.safe_load((reference / "recipe.yaml").read_text())
    assert recipe["run"]["dir"] == str(reference) and recipe["parallel"]["backend"] == "fsdp2"


def test_warning_signal_resumes_to_identical_params(train_jobs, reference: Path) -> None:
    job, run_dir, signalled_at = train_jobs["usr1"]
    info = wait_job(job, run_dir, timeout=400)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log
    assert "run state: preempted" in log and "requeueing job" in log
    assert signalled_at <= resumed_step(run_dir) < STEPS  # the checkpoint taken on the signal
    assert json.loads((run_dir / "status.json").read_text())["restarts"] == 1
    assert_same_params(run_dir, reference)


def test_sigterm_preemption_resumes_from_checkpoint(train_jobs, reference: Path) -> None:
    job, run_dir, periodic = train_jobs["term"]
    assert "#SBATCH --signal" not in (run_dir / "slurm" / "job.sbatch").read_text()
    info = wait_job(job, run_dir, timeout=400)
    log = job_log(run_dir)
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log
    start = resumed_step(run_dir)
    assert periodic <= start < STEPS, (start, periodic)  # nothing older than the last periodic
    assert (run_dir / "checkpoints" / f"step_{start:08d}").exists()
    assert_same_params(run_dir, reference)


def test_sweep_of_three_runs(slurm, tmp_path: Path) -> None:
    base = apply_overrides(load_recipe(REPO / "configs" / "vit_digits.yaml"),
                           dict(parse_override(o) for o in TRAIN))  # fmt: skip
    base = apply_overrides(base, {"schedule.steps": 30, "checkpoint.every_steps": 0})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump({"base": "base.yaml", "grid": {"optim.lr": [1e-3, 2e-3, 4e-3]}})
    )
    root = tmp_path / "sweep"
    out = cli("slurm", "sweep", str(sweep), "--root", str(root), "--nodes", "1",
              "--env", "OMP_NUM_THREADS=1", "--time", "10")  # fmt: skip
    jobs = re.findall(r"submitted job (\d+)", out)
    assert len(jobs) == 3, out
    again = subprocess.run([sys.executable, "-m", "pretrain", "slurm", "sweep", str(sweep),
                            "--root", str(root), "--only", "lr0.001"], cwd=REPO,
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert again.returncode != 0 and "still active" in again.stderr  # one job per run dir
    names = ["lr0.001", "lr0.002", "lr0.004"]
    for job, name in zip(jobs, names):
        info = wait_job(job, root / name)
        assert info["JobState"] == "COMPLETED", job_log(root / name)
        assert yaml.safe_load((root / name / "recipe.yaml").read_text())["optim"]["lr"] == float(
            name[2:]
        )
    rows = json.loads(cli("runs", "status", str(root), "--json"))
    assert [(r["run"], r["state"], r["step"], r["restarts"]) for r in rows] == [
        (name, "completed", 30, 0) for name in names]  # fmt: skip
    assert all(r["last_loss"] is not None and r["job"] in jobs for r in rows)
    table = cli("runs", "status", str(root))
    assert all(name in table for name in names) and table.count("completed") == 3
