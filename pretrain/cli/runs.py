"""`pretrain runs status DIR...`: the state of run directories at a glance (launch/runs.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from launch.runs import find_runs, format_table, last_job, slurm_states, summarize

STATUS_EPILOG = """\
examples:
  pretrain runs status runs/sweep   # every run under a sweep root
  pretrain runs status runs/vit runs/lm_bytes --json
"""


def cmd_status(args: argparse.Namespace) -> int:
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(2, "no such directory", missing[0])
    runs = [run for d in args.dirs for run in find_runs(Path(d))]
    if not runs:
        print(f"no run directories under {' '.join(args.dirs)}")
        return 1
    jobs = slurm_states() if any(last_job(run) for run in runs) else {}
    rows = [summarize(run, jobs) for run in runs]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="show the state of run directories",
        description="Inspect run directories written by `pretrain train` and its launchers.",
    )
    sub = parser.add_subparsers(dest="runs_command", metavar="COMMAND")
    p = sub.add_parser(
        "status",
        help="state, step, last loss and restarts of runs",
        description="Show each run's state (running, completed, preempted, failed; queued when "
        "submitted but not\nstarted), step, last loss, restarts and Slurm job. DIR is a run "
        "directory or a directory of runs\n(a sweep root).",
        epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directory or sweep root")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=cmd_status)
