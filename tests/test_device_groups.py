"""Every collective meets a backend for its tensor's device (reproduced on CPU, 2 ranks).

A group whose only backend serves cuda is what an nccl-only group is to a CPU tensor: the call
sites as they were crash on it; the group init_distributed builds for a CUDA run (gloo standing
in for NCCL) carries the stop/save agreement, the evaluation sums and the async-save poll.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretrain.dist import group_backend
from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow


def run_workers(mode: str, out) -> dict[int, dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests/device_group_worker.py"), mode, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}


def test_cuda_run_group_has_a_backend_per_device_type():
    assert group_backend("cuda") == "cpu:gloo,cuda:nccl"
    assert group_backend("cpu") == "gloo"


def test_cuda_only_group_crashes_at_the_old_call_sites(tmp_path):
    for rank, seen in run_workers("today", tmp_path).items():
        for site in ("agree", "evaluate", "poll"):
            assert "No backend type associated with device type cpu" in seen[site], (rank, site)


def test_cuda_run_group_carries_agreement_eval_and_async_poll(tmp_path):
    seen = run_workers("fixed", tmp_path)
    for rank in (0, 1):
        assert seen[rank]["save"] is True and seen[rank]["stop"] is False, rank  # rank 1 asked
        assert seen[rank]["committed"] == "step_00000001", rank
    assert seen[0]["eval_loss"] == seen[1]["eval_loss"] > 0  # the sums of both ranks


def test_collective_timeout_names_rank_op_and_step(tmp_path):
    error = run_workers("timeout", tmp_path)[0]["error"]
    assert error.startswith("rank 0 timed out in all_reduce(stop/save agreement) at step 7"), error
