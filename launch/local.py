"""Commands that start `pretrain train` on this machine: a plain process or torchrun
(`pretrain launch local` and `pretrain scaling run` use them)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


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


def launch_env(nproc: int) -> dict[str, str]:
    """Split the CPU cores between the ranks unless the user chose OMP_NUM_THREADS."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env
