"""`pretrain launch local --nproc N RECIPE [key=value ...]`: torchrun on this machine."""

from __future__ import annotations

import argparse
import os
import shlex
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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="launch a recipe on this machine with torchrun",
        description="Launch a multi-process run on this machine (torchrun --standalone).",
        epilog="example: pretrain launch local --nproc 2 configs/vit_digits.yaml parallel.backend=fsdp2",
    )
    sub = p.add_subparsers(dest="where", metavar="WHERE", required=True)
    local = sub.add_parser("local", help="torchrun with N processes on this machine")
    local.add_argument(
        "--nproc", type=int, default=2, help="processes (ranks) to start (default 2)"
    )
    local.add_argument(
        "--dry-run", action="store_true", help="print the command instead of running it"
    )
    local.add_argument("recipe", help="YAML recipe")
    local.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    local.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        print(
            f"pretrain launch local: error: --nproc must be >= 1, got {args.nproc}", file=sys.stderr
        )
        return 2
    cmd = torchrun_command(args.nproc, args.recipe, args.overrides)
    env = launch_env(args.nproc)
    if args.dry_run:
        print(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} " + shlex.join(cmd))
        return 0
    os.execvpe(cmd[0], cmd, env)  # signals reach torchrun directly
    return 0
