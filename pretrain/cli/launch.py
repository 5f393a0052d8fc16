"""`pretrain launch local --nproc N RECIPE [key=value ...]`: torchrun on this machine."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from launch.local import launch_env, torchrun_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "launch",
        help="launch a recipe on this machine with torchrun",
        description="Launch a multi-process run on this machine (torchrun --standalone).",
        epilog="example: pretrain launch local --nproc 2 configs/vit_digits.yaml "
        "parallel.backend=fsdp2",
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
