"""Shared helpers: run the real CLI in subprocesses (torchrun for several ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    if nproc == 0:
        return [sys.executable, "-m", "pretrain", "train", recipe, *overrides]
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


def run_train(
    nproc: int, overrides: list[str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """nproc=0: plain single process; else torchrun. Fails the test with the output on error."""
    proc = subprocess.run(
        train_cmd(nproc, overrides),
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
