"""`pretrain launch local`: preemption signals reach the ranks (not torchrun), the ranks
checkpoint, and the launcher exits 0 with no rank left behind (launch/local.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from launch.local import children
from pretrain.checkpoint import latest_complete
from pretrain.run_dir import read_status
from tests.conftest import REPO, TINY, subprocess_env


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["USR1", "TERM"])
def test_signal_to_launcher_checkpoints_and_exits_0(tmp_path, sig):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain", "launch", "local", "--nproc", "2",
           "configs/vit_digits.yaml", *TINY, "schedule.steps=100000", "checkpoint.every_steps=0",
           "parallel.backend=fsdp2", f"run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while read_status(run_dir).get("step", 0) < 3 and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    torchrun = children(proc.pid)
    ranks = [pid for parent in torchrun for pid in children(parent)]
    assert len(torchrun) == 1 and len(ranks) == 2
    proc.send_signal(sig)
    rc = proc.wait(timeout=180)
    status = read_status(run_dir)
    assert rc == 0, proc.stderr.read()[-3000:]
    assert status["state"] == "preempted", status
    saved = latest_complete(run_dir / "checkpoints")
    assert saved is not None and saved.name == f"step_{status['step']:08d}"
    assert not any(_alive(pid) for pid in ranks), "orphaned ranks"


def test_dry_run_validates_and_shows_the_supervised_command(capsys):
    from pretrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "local", "--dry-run", "configs/vit_digits.yaml", "data.format=memory",
              "run.name=x"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT" in out and "run.name=x" in out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
