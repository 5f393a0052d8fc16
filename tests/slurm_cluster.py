"""Helpers for tests on the real localhost Slurm cluster (slurm/start.sh): start it, wait on jobs.

Jobs are watched through `scontrol show job` (the cluster keeps finished jobs for MinJobAge;
there is no accounting database, so no sacct).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("PRETRAIN_SLURM_STATE", "/tmp/pretrain-slurm"))
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "PREEMPTED"}  # fmt: skip


def _ping(conf: Path) -> bool:
    env = {**os.environ, "SLURM_CONF": str(conf)}
    return subprocess.run(["scontrol", "ping"], env=env, capture_output=True).returncode == 0


def cluster() -> Iterator[Path]:
    """Install Slurm if missing, start the test cluster unless one runs, stop what we started."""
    if shutil.which("sbatch") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(REPO / "slurm" / "install.sh")], check=False)
    if shutil.which("sbatch") is None or shutil.which("slurmd") is None:
        pytest.skip("Slurm is not installed and slurm/install.sh could not install it "
                    "(needs root and Debian's apt)")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("the localhost test cluster runs slurmctld/slurmd as root")
    conf = STATE / "slurm.conf"
    started = not (conf.exists() and _ping(conf))
    if started:
        out = subprocess.run(["bash", str(REPO / "slurm" / "start.sh"), str(STATE)],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 0, f"slurm/start.sh failed:\n{out.stdout}\n{out.stderr}"
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        yield conf
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if started:
            subprocess.run(["bash", str(REPO / "slurm" / "stop.sh"), str(STATE)], check=False)


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (JobState, Restarts, Reason, ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def job_log(run_dir: Path) -> str:
    logs = sorted((run_dir / "slurm").glob("*.out"))
    return "\n".join(p.read_text(errors="replace") for p in logs) or "(no job log)"


def wait_job(job_id: str, run_dir: Path, timeout: float = 180) -> dict[str, str]:
    """Wait until the job reached a final state (a requeued job passes through PENDING)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if info["JobState"] in FINAL:
            # While a running job requeues itself it can show a final state for a moment;
            # a job that stays final (same restart count) a few seconds later is done.
            time.sleep(3)
            again = job_info(job_id)
            if again["JobState"] in FINAL and again["Restarts"] == info["Restarts"]:
                return again
        time.sleep(1)
    subprocess.run(["scancel", job_id], check=False)
    raise AssertionError(f"job {job_id} not done after {timeout}s: {info}\n{job_log(run_dir)}")


def wait_until(predicate: Callable[[], bool], what: str, run_dir: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{job_log(run_dir)}")


def status_step(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "status.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0
