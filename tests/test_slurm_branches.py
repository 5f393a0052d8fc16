"""A branched-WSD plan submitted to the real localhost Slurm cluster: each decay branch is
submitted with `--dependency=afterok:` its stable run's job, so it starts only once the stable
run has completed (its checkpoint exists), and then resumes from that checkpoint.

Both nodes are free, so without the dependency the branch would start at once, find no
checkpoint to start from and fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from slurm_cluster import REPO, cluster, job_log, wait_job

from pretrain.checkpoint import step_dir_name

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SHAPE = ["model.width=32", "model.depth=2", "model.num_heads=2", "data.format=memory",
         "data.name=synthetic_images", "data.global_batch_size=12", "optim.lr=3e-3",
         "schedule.warmup_steps=2", "logging.progress_bar=false",
         "logging.tensorboard=false"]  # fmt: skip


@pytest.fixture(scope="module")
def slurm():
    yield from cluster()


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pretrain", *args], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, f"pretrain {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def when(info: dict[str, str], key: str) -> datetime:
    return datetime.fromisoformat(info[key])


def test_branch_job_starts_after_its_stable_job_and_resumes_from_it(slurm, tmp_path: Path):
    sweep, root = tmp_path / "branches.yaml", tmp_path / "runs"
    sets = [arg for kv in SHAPE for arg in ("--set", kv)]
    cli("scaling", "plan-branches", "--base", "configs/vit_digits.yaml", "--decay-starts", "20",
        "--decay-ratio", "0.5", "--evals", "2", *sets, "--root", str(root), "-o", str(sweep))
    out = cli("slurm", "sweep", str(sweep), "--root", str(root), "--nodes", "1", "--time", "10",
              "--env", "OMP_NUM_THREADS=1")  # fmt: skip
    stable_job, branch_job = re.findall(r"submitted job (\d+)", out)
    stable, branch = root / "vit-w32-d2-stable", root / "vit-w32-d2-decay20"
    script = (branch / "slurm" / "job.sbatch").read_text()
    assert f"#SBATCH --dependency=afterok:{stable_job}\n" in script
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in script
    assert "--dependency" not in (stable / "slurm" / "job.sbatch").read_text()

    first = wait_job(stable_job, stable, timeout=400)
    assert first["JobState"] == "COMPLETED", job_log(stable)
    second = wait_job(branch_job, branch, timeout=400)
    assert second["JobState"] == "COMPLETED", job_log(branch)
    assert when(second, "StartTime") >= when(first, "EndTime"), (first, second)
    stable_20 = stable / "checkpoints" / step_dir_name(20)
    assert f"resumed from {stable_20} at step 20" in job_log(branch), job_log(branch)
