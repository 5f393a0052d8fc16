"""The runs table (one row per finished run) and the curves table (one row per evaluation),
as CSV files: the hand-off between `collect` and `fit`, and easy to build by hand from any
other framework's logs.

runs.csv columns (the first five are required by `fit`):
    name, params, tokens, flops, loss,
    params_non_embedding, samples, loss_source, family, width, depth, steps, status, run_dir
curves.csv columns: name, params, flops, tokens, loss  (cumulative flops/tokens per evaluation),
    and step (completed optimizer steps; the curve laws need it)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrain.scaling_laws.envelope import Curve
from pretrain.scaling_laws.validate import ScalingDataError

REQUIRED = ["name", "params", "tokens", "flops", "loss"]
RUN_COLUMNS = REQUIRED + [
    "params_non_embedding", "samples", "loss_source", "family", "width", "depth", "steps",
    "status", "run_dir",
    # the LR schedule (pretrain/schedule.py) the run trained under, for the curve laws
    "lr", "schedule", "schedule_steps", "warmup_steps", "min_lr_ratio", "decay_fraction",
    # a branched WSD run: the stable run it resumed from and the step its decay starts
    "branch_of", "decay_start", "role",
]  # fmt: skip
CURVE_COLUMNS = ["name", "params", "flops", "tokens", "loss"]


@dataclass
class RunTable:
    """Rows of runs.csv as dicts plus numeric views of the columns the fits use."""

    rows: list[dict] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [str(r["name"]) for r in self.rows]

    def column(self, name: str) -> np.ndarray:
        """A numeric column; a missing or non-numeric cell names the run and the column."""
        out = np.empty(len(self.rows))
        for i, r in enumerate(self.rows):
            value = r.get(name, "")
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise ScalingDataError(
                    f"column {name!r} of run {r.get('name', i)!r} is {value!r}, not a number"
                ) from None
        return out

    def __len__(self) -> int:
        return len(self.rows)


def write_csv(path: str | Path, rows: Iterable[dict], columns: list[str]) -> None:
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(columns))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns + extra, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path: str | Path, required: list[str]) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise ScalingDataError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ScalingDataError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def read_runs(path: str | Path) -> RunTable:
    rows = _read_csv(path, REQUIRED)
    if not rows:
        raise ScalingDataError(f"{path}: no runs")
    names = [r["name"] for r in rows]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ScalingDataError(f"{path}: duplicate run name(s) {', '.join(dup)}")
    return RunTable(rows)


def read_curves(path: str | Path) -> list[Curve]:
    """Group curves.csv rows by run into `Curve`s (rows sorted by flops)."""
    by_run: dict[str, list[dict]] = {}
    for r in _read_csv(path, CURVE_COLUMNS):
        by_run.setdefault(r["name"], []).append(r)
    curves = []
    for name, rows in by_run.items():
        rows.sort(key=lambda r: float(r["flops"]))
        arr = {k: np.array([float(r[k]) for r in rows]) for k in ("flops", "tokens", "loss")}
        curves.append(Curve(name, float(rows[0]["params"]), arr["flops"], arr["tokens"],
                            arr["loss"]))  # fmt: skip
    return curves


def read_step_curves(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """curves.csv as {run: (steps, losses)} sorted by step (a repeated step keeps the last)."""
    by_run: dict[str, dict[int, float]] = {}
    for r in _read_csv(path, ["name", "step", "loss"]):
        try:
            step, loss = int(float(r["step"])), float(r["loss"])
        except ValueError:
            raise ScalingDataError(
                f"{path}: run {r['name']!r} has step {r['step']!r}, loss {r['loss']!r}"
            ) from None
        by_run.setdefault(r["name"], {})[step] = loss
    return {
        name: (np.array(sorted(d), dtype=np.int64), np.array([d[k] for k in sorted(d)]))
        for name, d in by_run.items()
    }
