"""Training curves with the LR schedule each was trained under: the input of the curve laws.

A run's LR sequence is rebuilt from its schedule columns in runs.csv (written by `collect` from
RUN/config.yaml) with the trainer's own `pretrain.schedule.lr_at`, so a law sees exactly the
LRs the run used. A schedule can also be typed, for predicting a run never trained:
`wsd:steps=2000,decay_fraction=0.2,warmup_steps=50,lr=1e-3` (keys of the `schedule` section,
plus `lr`; unset keys take ScheduleConfig's defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from pretrain.scaling_laws.table import RunTable, read_step_curves
from pretrain.scaling_laws.validate import ScalingDataError
from pretrain.schedule import lr_at
from pretrain.schedule_config import ScheduleConfig

# runs.csv column -> ScheduleConfig field (`collect` writes them from the run's config)
SCHEDULE_COLUMNS = {"schedule": "name", "schedule_steps": "steps", "warmup_steps": "warmup_steps",
                    "min_lr_ratio": "min_lr_ratio", "decay_fraction": "decay_fraction"}  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """A schedule section and the peak LR: everything that fixes a run's LR sequence."""

    cfg: ScheduleConfig
    lr: float

    def lrs(self) -> np.ndarray:
        """LR of every optimizer step 0..steps-1, from the trainer's own schedule code."""
        return np.array([lr_at(i, self.lr, self.cfg) for i in range(self.cfg.steps)])

    def label(self) -> str:
        c = self.cfg
        tail = f", decay {c.decay_fraction:g}" if c.name == "wsd" else ""
        return f"{c.name} {c.steps} steps{tail}"


@dataclass(frozen=True)
class ScheduledCurve:
    """One run's evaluated steps and losses, and its schedule."""

    name: str
    params: float
    steps: np.ndarray  # int, completed optimizer steps at each evaluation
    loss: np.ndarray
    schedule: Schedule

    def __post_init__(self) -> None:
        n = self.schedule.cfg.steps
        if len(self.steps) < 1:
            raise ScalingDataError(f"curve of run {self.name!r} has no evaluations")
        if self.steps.min() < 1 or self.steps.max() > n:
            raise ScalingDataError(f"curve of run {self.name!r}: evaluated steps must lie in "
                                   f"[1, {n}] (schedule.steps), got {self.steps.min()}.."
                                   f"{self.steps.max()}")  # fmt: skip
        if not np.all(np.isfinite(self.loss)) or np.any(self.loss <= 0):
            raise ScalingDataError(f"curve of run {self.name!r} has a non-positive or NaN loss")


def parse_schedule(text: str) -> Schedule:
    """`NAME:key=value,...` (see the module docstring) as a Schedule; one line on bad input."""
    name, _, rest = text.partition(":")
    kinds = {f.name: f.type for f in fields(ScheduleConfig)}
    values: dict = {"name": name.strip()}
    lr = 1.0
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or (key not in kinds and key != "lr") or key == "name":
            keys = ", ".join(k for k in kinds if k != "name")
            raise ScalingDataError(
                f"schedule {text!r}: {item!r} is not key=value with key one of lr, {keys}"
            )
        try:
            number = float(raw)
        except ValueError:
            raise ScalingDataError(f"schedule {text!r}: {key}={raw!r} is not a number") from None
        if key == "lr":
            lr = number
        else:
            values[key] = int(number) if key in ("steps", "warmup_steps") else number
    return _schedule(values, lr, f"schedule {text!r}")


def _schedule(values: dict, lr: float, where: str) -> Schedule:
    cfg = ScheduleConfig(**values)
    if cfg.name not in ("cosine", "wsd", "constant"):
        raise ScalingDataError(f"{where}: name {cfg.name!r} is not one of cosine, wsd, constant")
    if cfg.steps < 1 or cfg.warmup_steps < 0 or not lr > 0:
        raise ScalingDataError(f"{where}: needs steps >= 1, warmup_steps >= 0 and lr > 0")
    return Schedule(cfg, lr)


def run_schedule(row: dict) -> Schedule:
    """The schedule of one runs.csv row; a missing column names the run and the column."""
    name = row.get("name", "?")
    values: dict = {}
    for column, key in SCHEDULE_COLUMNS.items():
        raw = row.get(column, "")
        if raw in ("", None):
            raise ScalingDataError(f"run {name!r} has no {column!r} column (re-run `pretrain "
                                   f"scaling collect` to record each run's schedule)")  # fmt: skip
        try:
            values[key] = raw if key == "name" else float(raw)
        except ValueError:
            raise ScalingDataError(f"run {name!r}: {column}={raw!r} is not a number") from None
    values["steps"], values["warmup_steps"] = int(values["steps"]), int(values["warmup_steps"])
    try:
        lr = float(row.get("lr", ""))
    except ValueError:
        raise ScalingDataError(f"run {name!r}: column 'lr' is {row.get('lr')!r}") from None
    return _schedule(values, lr, f"run {name!r}")


def scheduled_curves(table: RunTable, curves_path: str | Path) -> list[ScheduledCurve]:
    """Join runs.csv (schedules) with curves.csv (step, loss) by run name, in runs.csv order."""
    by_run = read_step_curves(curves_path)
    out = []
    for row in table.rows:
        name = str(row["name"])
        if name not in by_run:
            continue  # a run without evaluations has no curve; its final loss is still a point
        steps, loss = by_run[name]
        out.append(ScheduledCurve(name, float(row["params"]), steps, loss, run_schedule(row)))
    if not out:
        raise ScalingDataError(f"{curves_path}: no curve belongs to a run of the runs table")
    return out
