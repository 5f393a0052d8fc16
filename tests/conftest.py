"""Shared helpers: run the real CLI in subprocesses (torchrun for several ranks)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch.local import train_command

REPO = Path(__file__).resolve().parents[1]

# A model and data small enough that a 2-rank step takes milliseconds on CPU.
TINY = [
    "model.width=32",
    "model.depth=2",
    "model.num_heads=2",
    "data.format=memory",
    "data.name=synthetic_images",
    "data.global_batch_size=12",
    "optim.lr=3e-3",
    "schedule.warmup_steps=2",
    "logging.every_steps=1",
    "logging.eval_every_steps=0",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    return env


def train_cmd(
    nproc: int, overrides: list[str], recipe: str = "configs/vit_digits.yaml"
) -> list[str]:
    """`pretrain train` on one process, or under torchrun with `nproc` ranks."""
    return train_command(nproc, recipe, overrides)


def run_train(
    nproc: int, overrides: list[str], timeout: float = 300,
    recipe: str = "configs/vit_digits.yaml",
) -> subprocess.CompletedProcess:
    """nproc=0: plain single process; else torchrun. Fails the test with the output on error."""
    proc = subprocess.run(
        train_cmd(nproc, overrides, recipe),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants. torchrun starts each worker in a session of its own, so
    killing torchrun's process group would leave the workers running to the end."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def kill_run_at_step(cmd: list[str], run_dir: Path, kill_step: int, timeout: float = 300) -> int:
    """Start a run; once status.json reports `kill_step`, SIGKILL the launcher and every rank at
    once (a node failure) and wait until all are gone. Returns the step the status showed."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    from pretrain.run_dir import read_status

    deadline = time.time() + timeout
    killed: list[int] = []
    try:
        while time.time() < deadline and proc.poll() is None:
            if read_status(run_dir).get("step", 0) >= kill_step:
                killed = process_tree(proc.pid)
                for pid in killed:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.wait()
    while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in killed):
        time.sleep(0.01)
    status = read_status(run_dir)
    assert killed, f"run ended (rc={proc.returncode}) before reaching step {kill_step}"
    assert status.get("state") != "completed", "run finished before it could be killed"
    return status.get("step", 0)


def _alive(pid: int) -> bool:
    """False for a zombie (killed, waiting to be reaped) or a vanished process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
