"""Runs that end in an error say so: status.json `failed` with the error on one line (also for
BaseExceptions such as torch's CheckpointException), a failed save names the file and the cause
and removes its `.partial`, older checkpoints stay, and the Slurm job script does not requeue."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from torch.distributed.checkpoint.api import CheckpointException

from launch.slurm import JobSpec, SlurmConfig, render_sbatch
from pretrain.checkpoint import CheckpointError, checkpointer, list_checkpoints, verify_checkpoint
from pretrain.checkpoint.writeback import WritebackFile
from pretrain.run_dir import FAILED, one_line_error, read_status, write_status
from tests.test_checkpoint_commit import run_inprocess

EVERY_2 = ("checkpoint.every_steps=2", "checkpoint.keep_last=5")


def slurm_decision(tmp_path: Path, run_dir: Path) -> tuple[int, str, bool]:
    """Run the rendered job script's requeue decision (everything after the training step)
    against `run_dir`: (exit code, log, whether it asked Slurm to requeue)."""
    script = render_sbatch(JobSpec(run_dir=run_dir, recipe=run_dir / "recipe.yaml",
                                   slurm=SlurmConfig(), workdir=tmp_path))
    decision = script[script.index("\nstate=$(") + 1 :]
    requeued = tmp_path / "requeued"
    prelude = (
        f"RUN_DIR={run_dir}; PYTHON={sys.executable}; RESTART=0; MAX_RESTARTS=3; terminated=0\n"
        "rc=1; SLURM_JOB_ID=42\n"
        'log() { echo "$*"; }\n'
        f'scontrol() {{ echo "$*" >> {requeued}; }}\n'  # Slurm's requeue command, recorded
    )
    out = subprocess.run(["bash", "-c", prelude + decision], capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr, requeued.exists()


def test_job_script_requeues_preempted_but_not_failed_runs(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_status(run_dir, state="preempted")
    rc, _, requeued = slurm_decision(tmp_path, run_dir)
    assert rc == 0 and requeued
    (tmp_path / "requeued").unlink()
    write_status(run_dir, state=FAILED, error="RuntimeError: boom")
    rc, log, requeued = slurm_decision(tmp_path, run_dir)
    assert rc == 1 and not requeued and "not requeueing" in log


def test_base_exception_while_loading_fails_the_run_and_slurm_does_not_requeue(
    tmp_path, monkeypatch
):
    """When no checkpoint loads (every load raises torch's CheckpointException, a
    BaseException), the run fails: status `failed` with the error, checkpoints untouched."""
    run_dir = tmp_path / "run"
    run_inprocess(run_dir, "schedule.steps=4", *EVERY_2)
    before = {p.name: sorted(f.name for f in p.rglob("*")) for p in
              list_checkpoints(run_dir / "checkpoints")}

    def always_fail(engine, path, **kwargs):
        raise CheckpointException("load failed", {0: (OSError("forced: device gone"),
                                                     traceback.StackSummary())})

    monkeypatch.setattr(checkpointer, "load_engine_state", always_fail)
    with pytest.raises(CheckpointError, match="none of the 2 complete checkpoint"):
        run_inprocess(run_dir, "schedule.steps=6", *EVERY_2)
    status = read_status(run_dir)
    assert status["state"] == FAILED
    assert "forced: device gone" in status["error"] and "\n" not in status["error"]
    after = {p.name: sorted(f.name for f in p.rglob("*")) for p in
             list_checkpoints(run_dir / "checkpoints")}
    assert after == before
    rc, _, requeued = slurm_decision(tmp_path, run_dir)
    assert rc == 1 and not requeued


def fill_disk_at(monkeypatch, partial_name: str, file_name: str) -> None:
    """Make writes of `file_name` in the checkpoint `partial_name` fail as a full disk does."""
    real = WritebackFile._write_through

    def write_or_enospc(self, data):
        if partial_name in self._path and self._path.endswith(file_name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(WritebackFile, "_write_through", write_or_enospc)


# DCP's extra writer thread dies with the error (it is reported by the save all the same).
THREAD_ERROR = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@THREAD_ERROR
@pytest.mark.parametrize("file_name", ["__0_0.distcp", "__0_1.distcp", ".metadata.tmp"])
def test_disk_full_during_save_fails_naming_the_file_and_keeps_older_checkpoints(
    tmp_path, monkeypatch, file_name
):
    """Either DCP writer thread (DCP itself drops errors on its extra thread) or the metadata."""
    run_dir = tmp_path / "run"
    fill_disk_at(monkeypatch, "step_00000004.partial", file_name)
    with pytest.raises(CheckpointError, match="no space left on device") as failed:
        run_inprocess(run_dir, "schedule.steps=6", *EVERY_2)
    message = str(failed.value)
    assert re.search(rf"writing \S*step_00000004\.partial/model/{re.escape(file_name)}", message)
    assert re.search(r"\d+\.\d MB needed, \d+\.\d MB free", message)
    status = read_status(run_dir)
    assert status["state"] == FAILED and "no space left on device" in status["error"]
    ckpts = run_dir / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step_00000002"]  # no .partial left
    assert verify_checkpoint(ckpts / "step_00000002") is None
    rc, _, requeued = slurm_decision(tmp_path, run_dir)
    assert rc == 1 and not requeued


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@THREAD_ERROR
def test_real_full_disk_during_save(tmp_path):
    """The same on a real, small file system (a tmpfs: needs root; skipped otherwise)."""
    probe = tmp_path / "probe"
    run_inprocess(probe, "schedule.steps=2", "checkpoint.every_steps=2")
    ckpt_bytes = sum(f.stat().st_size for f in (probe / "checkpoints").rglob("*") if f.is_file())
    run_dir = tmp_path / "run"
    # Room for two checkpoints, not three.
    if not _mount_tmpfs(run_dir / "checkpoints", int(ckpt_bytes * 2.5)):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        with pytest.raises(CheckpointError, match="no space left on device writing"):
            run_inprocess(run_dir, "schedule.steps=8", *EVERY_2)
        status = read_status(run_dir)
        assert status["state"] == FAILED and "MB free" in status["error"]
        needed, free = map(float, re.search(r"([\d.]+) MB needed, ([\d.]+) MB free",
                                            status["error"]).groups())
        assert needed > 0 and free > 0  # free: as it is once the partial save is removed
        ckpts = run_dir / "checkpoints"
        assert [p.name for p in sorted(ckpts.iterdir())] == ["step_00000002", "step_00000004"]
        assert all(verify_checkpoint(p) is None for p in ckpts.iterdir())
    finally:
        _unmount(run_dir / "checkpoints")


def _unmount(path: Path) -> None:
    """Unmount the test's tmpfs. Once (1 in ~10 full-suite runs) umount found it busy right
    after the failed run, a file still open for a moment; retry, then detach it lazily (the
    kernel frees it when the last file closes) rather than fail a test whose checks passed."""
    for _ in range(5):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(1)
    subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_status_json_is_strict_json_without_nan(tmp_path):
    write_status(tmp_path, state="completed", last_loss=float("nan"), other=[float("inf"), 1.5])
    text = (tmp_path / "status.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in status.json"))
    assert strict["last_loss"] is None and strict["other"] == [None, 1.5]
    # A file from before (with a bare NaN) still reads, as None, and is rewritten strict.
    (tmp_path / "status.json").write_text('{"state": "completed", "last_loss": NaN}')
    assert read_status(tmp_path)["last_loss"] is None
    write_status(tmp_path, step=3)
    assert "NaN" not in (tmp_path / "status.json").read_text()


def test_a_restarted_run_drops_the_previous_error(tmp_path):
    write_status(tmp_path, state=FAILED, error="OSError: disk gone", failed_rank=1)
    write_status(tmp_path, step=5)  # a progress update keeps it
    assert read_status(tmp_path)["error"] == "OSError: disk gone"
    write_status(tmp_path, state="running", step=5)
    assert "error" not in read_status(tmp_path) and "failed_rank" not in read_status(tmp_path)


def test_one_line_error_unwraps_checkpoint_exception():
    wrapped = CheckpointException("save failed", {1: (ValueError("bad\nvalue"),
                                                     traceback.StackSummary())})
    line = one_line_error(wrapped)
    assert line == "ValueError: bad value (rank 1; CheckpointException)"
    assert len(one_line_error(RuntimeError("x" * 5000))) == 1000
