"""Sweep files: one base recipe and named runs, optionally crossed with a grid.

    base: configs/lm_tiny.yaml        # relative to the sweep file (or the working directory)
    runs:                             # optional; each run gets RUN_ROOT/NAME
      - {name: small, overrides: {model.width: 64}}
      - {name: branch, overrides: {...}, after: [small]}   # starts once `small` completed
    grid:                             # optional; a cartesian product, crossed with `runs`
      optim.lr: [1.0e-3, 3.0e-3]
      train.max_steps: [100, 200]

With only a grid, runs are named after their values (`lr0.001-max_steps100`); with both, each
listed run is crossed with every grid point (`small-lr0.001-max_steps100`). The scaling-laws
planner writes this format (`pretrain scaling plan`); `pretrain slurm sweep` submits it and
`pretrain scaling run` runs it. This module is the one reader of the format: both go through
`load_sweep`, so a file one accepts the other accepts too.

`after` names runs listed before this one that must complete first (a decay branch resumes
from its stable run's checkpoint): `pretrain slurm sweep` submits the run with
`--dependency=afterok:JOB`, and `pretrain scaling run` skips it when one of them failed. A
grid would rename the runs `after` names, so the two do not mix.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.safe_names import inside
from launch.recipe import check_key
from launch.slurm import check_name
from pretrain.overrides import read_yaml_file

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class SweepRun:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # runs of the sweep that must complete before this one starts


@dataclass(frozen=True)
class Sweep:
    base: Path
    runs: tuple[SweepRun, ...]


def _value_text(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return _UNSAFE.sub("_", text).strip("_.") or "x"


def point_name(point: dict[str, Any]) -> str:
    """A readable run name for a grid point: the keys' last parts followed by the values."""
    lasts = [key.rsplit(".", 1)[-1] for key in point]
    parts = []
    for key, last, value in zip(point, lasts, point.values()):
        label = last if lasts.count(last) == 1 else key.replace(".", "_")
        parts.append(f"{label}{_value_text(value)}")
    return "-".join(parts)


def expand(doc: dict, where: Path | None = None) -> Sweep:
    """Validate a parsed sweep file and expand its grid; `where` resolves a relative base."""
    if not isinstance(doc, dict):
        raise ValueError("a sweep file must be a YAML mapping")
    unknown = sorted(set(doc) - {"base", "runs", "grid"})
    if unknown:
        raise ValueError(f"unknown key(s) in sweep file: {', '.join(unknown)}")
    if not doc.get("base"):
        raise ValueError("sweep file needs `base`: the recipe every run starts from")
    base = Path(doc["base"])
    if not base.is_absolute() and where is not None and (where / base).exists():
        base = where / base
    runs = doc.get("runs") or []
    grid = doc.get("grid") or {}
    if not isinstance(runs, list) or not isinstance(grid, dict):
        raise ValueError("`runs` must be a list and `grid` a mapping of key -> list of values")
    listed: list[SweepRun] = []
    for i, run in enumerate(runs):
        if (not isinstance(run, dict) or set(run) - {"name", "overrides", "after"}
                or "name" not in run):  # fmt: skip
            raise ValueError(f"runs[{i}] must be {{name: NAME, overrides: {{key: value}}, "
                             f"after: [NAME, ...]}}")  # fmt: skip
        overrides = run.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"runs[{i}].overrides must be a mapping")
        for key in overrides:
            check_key(str(key))
        after = _after(run.get("after") or [], f"runs[{i}].after", {r.name for r in listed})
        if after and grid:
            raise ValueError(f"runs[{i}].after: `after` cannot be combined with a grid "
                             f"(the grid renames the runs it names)")  # fmt: skip
        name = check_name(str(run["name"]), f"runs[{i}].name")
        listed.append(SweepRun(name, dict(overrides), after))
    for key, values in grid.items():
        check_key(str(key))
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid.{key} must be a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if not listed:
        listed = [SweepRun("", {})]
    expanded = []
    for run, point in itertools.product(listed, points or [{}]):
        clash = set(run.overrides) & set(point)
        if clash:
            raise ValueError(f"run {run.name!r} overrides grid key(s) {sorted(clash)}")
        name = "-".join(part for part in (run.name, point_name(point)) if part)
        if not name:
            raise ValueError("sweep has neither runs nor a grid")
        expanded.append(SweepRun(check_name(name, "run name"), {**run.overrides, **point},
                                 run.after))  # fmt: skip
    names = [run.name for run in expanded]
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        raise ValueError(f"duplicate run names in sweep: {', '.join(dupes)}")
    return Sweep(base=base, runs=tuple(expanded))


def _after(names: Any, where: str, earlier: set[str]) -> tuple[str, ...]:
    """The runs `after` names, each listed before this run (so the file order is an order in
    which every run follows the runs it waits for, and no two runs wait for each other)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where} must be a list of run names")
    unknown = [n for n in names if n not in earlier]
    if unknown:
        raise ValueError(f"{where} names {', '.join(unknown)}: not a run listed before it")
    return tuple(dict.fromkeys(names))


def upstream_jobs(run: SweepRun, root: str | Path, submitting: set[str]) -> list[str]:
    """Job ids `run` must wait for among the runs it is `after` that are not submitted now
    (a job still queued or running); ValueError for one that is neither submitted now, nor
    active, nor completed, whose run directory has nothing for `run` to start from."""
    from launch.slurm import active_job
    from pretrain.run_dir import COMPLETED, read_status

    jobs = []
    for name in run.after:
        if name in submitting:
            continue
        upstream = run_dir(root, name)
        if job := active_job(upstream):
            jobs.append(job)
        elif read_status(upstream).get("state") != COMPLETED:
            raise ValueError(f"run {run.name} waits for {name}, which is not submitted now, "
                             f"not queued or running, and not completed in {upstream}")  # fmt: skip
    return jobs


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file."""
    path = Path(path)
    doc = read_yaml_file(path, "sweep file")
    try:
        return expand(doc, where=path.resolve().parent)
    except ValueError as e:
        raise ValueError(f"sweep file {path}: {e}") from e


def sweep_root(sweep_path: str | Path, root: str | Path | None = None) -> Path:
    """Parent of the sweep's run directories: `root`, else runs/<sweep file stem>."""
    return Path(root) if root else Path("runs") / Path(sweep_path).stem


def run_dir(root: str | Path, name: str, source: str = "sweep run name") -> Path:
    """ROOT/NAME for a run name read from a sweep file or run list, refusing one that would
    leave ROOT (the one path-safety rule, `data_pipeline.safe_names`)."""
    return Path(inside(root, check_name(name, source), source))
