"""Run a sweep's runs one after another on this machine (the toy-scale local path; at scale,
`pretrain slurm sweep` submits the same sweep file as an array).

Each run is its own `pretrain train` process, built by launch/ like any other launch, so a run
that crashes (or is killed) fails alone: the study reports it and goes on. Every run's config is
resolved here first, so a bad override stops the study before any training. Runs already
completed are skipped, so an interrupted study picks up where it stopped. Each run gets one
intra-op thread by default, which on a small shared CPU is faster than threads spinning against
each other.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launch.local import run_env, train_command
from launch.sweep import run_dir as safe_run_dir
from pretrain.run_dir import COMPLETED, read_status
from pretrain.scaling_laws.validate import ScalingDataError

log = logging.getLogger("pretrain.scaling")

# Toy runs on one CPU process: no process group, no TensorBoard, no checkpoints.
LOCAL_OVERRIDES = (
    "parallel.backend=single",
    "logging.tensorboard=false",
    "logging.progress_bar=false",
    "checkpoint.every_steps=0",
    "checkpoint.save_at_end=false",
)


@dataclass
class RunOutcome:
    name: str
    run_dir: str
    state: str  # completed | skipped (already completed) | failed
    seconds: float
    error: str = ""


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_sweep(
    sweep: dict, root: Path, extra: Sequence[str] = LOCAL_OVERRIDES, threads: int = 1
) -> list[RunOutcome]:
    """Train every run of `sweep` (see plan.py for the format) in sequence, in ROOT/NAME, each in
    a child process with `threads` intra-op threads (0: the child's default)."""
    from pretrain.config import load_config

    runs = []  # resolve every run's config first: a bad override fails before any training
    for run in sweep["runs"]:
        overrides = [*extra, *(f"{k}={_fmt(v)}" for k, v in run.get("overrides", {}).items())]
        try:  # a name that would leave ROOT is refused before anything is written
            overrides.append(f"run.dir={safe_run_dir(root, run['name'], 'sweep run name')}")
            cfg = load_config(sweep["base"], overrides)
        except ValueError as e:  # ConfigError
            raise ScalingDataError(f"sweep run {run['name']!r}: {e}") from None
        runs.append((run["name"], cfg, overrides, run.get("after") or []))
    env = run_env()  # each run is a job of its own, whatever group this process is in
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    outcomes: list[RunOutcome] = []
    for i, (name, cfg, overrides, after) in enumerate(runs, 1):
        run_dir = str(cfg.run_dir)
        if read_status(run_dir).get("state") == COMPLETED:
            outcomes.append(RunOutcome(name, run_dir, "skipped", 0.0))
            continue
        failed = [o.name for o in outcomes if o.state == "failed" and o.name in after]
        if failed:  # a branch of a failed stable run has no checkpoint to start from
            outcomes.append(RunOutcome(name, run_dir, "failed", 0.0,
                                       f"not run: it waits for {', '.join(failed)}, which failed"))
            log.error("%s not run: %s failed", name, ", ".join(failed))
            continue
        log.info("[%d/%d] %s: %d steps", i, len(runs), name, cfg.schedule.steps)
        t0 = time.perf_counter()
        code, last_line = _run_passing_stderr(train_command(0, str(sweep["base"]), overrides), env)
        state, error = "completed", ""
        if code != 0:  # one failed run must not end the study; it is reported
            state, error = "failed", _failure(code, last_line)
            log.error("%s failed: %s", name, error)
        outcomes.append(RunOutcome(name, run_dir, state, time.perf_counter() - t0, error))
    return outcomes


def _failure(code: int, last_line: str) -> str:
    """One line saying why a run's process ended badly."""
    if code < 0:  # killed: its last words are some log line, not the cause
        return f"killed by {signal.Signals(-code).name}"
    return last_line or f"exited with code {code}"


def _run_passing_stderr(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `cmd`, its stderr passed through to ours; returns (exit code, last non-blank stderr
    line), which for a Python crash is the exception's `Type: message`."""
    last = ""
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as p:
        try:
            for line in p.stderr:
                sys.stderr.write(line)
                if line.strip():
                    last = line.strip()
        except BaseException:  # the study is interrupted: the run checkpoints and stops too
            p.terminate()
            raise
    return p.returncode, last
