"""Commands that start `pretrain train` on this machine: a plain process or torchrun
(`pretrain launch local` and `pretrain scaling run` use them), and the supervisor that runs
torchrun the way the Slurm path does: preemption signals go to the ranks, not to torchrun.

Why: torchrun tears its workers down on SIGTERM (mid-save) and dies at once on SIGUSR1, leaving
the ranks as orphans. `run_supervised` starts torchrun with SIGTERM/SIGUSR1/SIGUSR2 ignored and
handling only SIGINT/SIGHUP/SIGQUIT, forwards those three signals to every rank, and waits: the
ranks agree on a step, checkpoint, mark the run preempted and exit 0, and so does the launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# the trainer's signals (pretrain/agreement.py): USR1/TERM stop after a checkpoint, USR2 saves
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
TORCHRUN_HANDLES = "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT"


def train_command(nproc: int, recipe: str, overrides: Sequence[str]) -> list[str]:
    """`pretrain train RECIPE overrides...` as a command: a plain process when nproc is 0 (no
    process group), else torchrun with nproc ranks."""
    if nproc == 0:
        return [sys.executable, "-m", "pretrain", "train", recipe, *overrides]
    return torchrun_command(nproc, recipe, list(overrides))


def torchrun_command(nproc: int, recipe: str, overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pretrain",
        "train",
        recipe,
        *overrides,
    ]


def supervised_torchrun_command(nproc: int, recipe: str, overrides: list[str]) -> list[str]:
    """torchrun that leaves SIGTERM to its workers (see the module docstring)."""
    cmd = torchrun_command(nproc, recipe, overrides)
    at = cmd.index("--standalone")
    return [*cmd[:at], TORCHRUN_HANDLES, *cmd[at:]]


# What torchrun (or an in-process run, pretrain/dist.py) sets for one process group. A run we
# start is a job of its own: inheriting these would make it join, or re-bind the port of, the
# group of the process that starts it (EADDRINUSE, or a hang).
RENDEZVOUS_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                   "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                   "TORCHELASTIC_MAX_RESTARTS")


def run_env() -> dict[str, str]:
    """This process's environment without its process-group rendezvous (`RENDEZVOUS_VARS`)."""
    return {k: v for k, v in os.environ.items() if k not in RENDEZVOUS_VARS}


def launch_env(nproc: int) -> dict[str, str]:
    """Split the CPU cores between the ranks unless the user chose OMP_NUM_THREADS."""
    env = run_env()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def children(parent: int) -> list[int]:
    """The direct children of `parent`: torchrun's ranks. (Their DataLoader workers must not get
    the signal: they would die of it; torchrun starts each rank in a session of its own, so a
    process-group signal would miss the ranks.)"""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _ignore_forwarded_signals() -> None:
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_supervised(cmd: list[str], env: dict[str, str]) -> int:
    """Run torchrun, forwarding SIGTERM/SIGUSR1/SIGUSR2 to its ranks; torchrun's exit code
    (0 after a clean preemption: the ranks checkpointed and exited 0)."""
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_forwarded_signals)

    def forward(signum: int, _frame: object) -> None:
        for pid in children(proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # torchrun got the terminal's SIGINT too and stops ranks
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
