"""Run a sweep's runs one after another in this process (the toy-scale local path; at scale,
`pretrain slurm sweep` submits the same sweep file as an array).

Runs already completed are skipped, so an interrupted study picks up where it stopped. Runs
share the process, so torch is imported once; each run gets one intra-op thread by default,
which on a small shared CPU is faster than threads spinning against each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
    """Train every run of `sweep` (see plan.py for the format) in sequence, in ROOT/NAME."""
    import torch

    from pretrain.config import load_config
    from pretrain.dist import shutdown
    from pretrain.trainer import train

    if threads > 0:
        torch.set_num_threads(threads)
    configs = []  # resolve every run's config first: a bad override fails before any training
    for run in sweep["runs"]:
        overrides = [*extra, *(f"{k}={_fmt(v)}" for k, v in run.get("overrides", {}).items())]
        overrides.append(f"run.dir={Path(root) / run['name']}")
        try:
            configs.append((run, load_config(sweep["base"], overrides)))
        except ValueError as e:  # ConfigError
            raise ScalingDataError(f"sweep run {run['name']!r}: {e}") from None
    outcomes = []
    for i, (run, cfg) in enumerate(configs, 1):
        run_dir = str(cfg.run_dir)
        if read_status(run_dir).get("state") == COMPLETED:
            outcomes.append(RunOutcome(run["name"], run_dir, "skipped", 0.0))
            continue
        log.info("[%d/%d] %s: %d steps", i, len(sweep["runs"]), run["name"], cfg.schedule.steps)
        t0 = time.perf_counter()
        try:
            train(cfg)
            state, error = "completed", ""
        except Exception as e:  # one failed run must not end the study; it is reported
            state, error = "failed", f"{type(e).__name__}: {e}"
            log.error("%s failed: %s", run["name"], error)
        finally:
            shutdown()
        outcomes.append(RunOutcome(run["name"], run_dir, state, time.perf_counter() - t0, error))
    return outcomes
