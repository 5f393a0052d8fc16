"""The end-to-end study and the fit-and-report step shared by `fit` and `study`.

plan (sweep.yaml) -> run each run locally -> collect (runs.csv, curves.csv)
  -> fit all approaches -> fits.json, report.md, loss_vs_compute.png, isoflop.png,
     optimal_allocation.png
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from pretrain.scaling_laws.analysis import Analysis, Options, analyze
from pretrain.scaling_laws.collect import collect
from pretrain.scaling_laws.diagnostics import diagnose
from pretrain.scaling_laws.diagnostics import render as render_diagnostics
from pretrain.scaling_laws.envelope import Curve
from pretrain.scaling_laws.plan import (
    candidate_shapes,
    model_stats_fn,
    parse_sets,
    plan_isoflop,
    read_sweep,
    write_sweep,
)
from pretrain.scaling_laws.plots import plot_all
from pretrain.scaling_laws.report import render
from pretrain.scaling_laws.runner import LOCAL_OVERRIDES, run_sweep
from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, RunTable, read_curves, write_csv


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x


def fit_and_report(
    table: RunTable, curves: list[Curve] | None, opts: Options, out_dir: Path, flops_note: str = ""
) -> Analysis:
    """Fit every approach, then write fits.json, the figures and report.md into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    a = analyze(table, curves, opts)
    diag = diagnose(a)
    doc = {**a.as_dict(), "diagnostics": diag.as_dict()}
    (out_dir / "fits.json").write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    figures = plot_all(a, out_dir)
    (out_dir / "report.md").write_text(render(a, figures, flops_note, render_diagnostics(diag)))
    return a


def summary(a: Analysis) -> list[str]:
    """A few lines for the terminal."""
    lines = []
    if a.parametric:
        p = a.parametric.params
        lines.append(
            f"approach 3: E={p['E']}, alpha={p['alpha']}, beta={p['beta']}; "
            f"N_opt ∝ C^{p['a']}, D_opt ∝ C^{p['b']}"
        )
    if a.isoflop:
        p = a.isoflop.params
        lines.append(f"approach 2: N_opt ∝ C^{p['a']}, D_opt ∝ C^{p['b']}")
    if a.envelope:
        p = a.envelope.params
        lines.append(f"approach 1: N_opt ∝ C^{p['a']}, D_opt ∝ C^{p['b']}")
    if a.compute:
        p = a.compute.params
        lines.append(f"compute law: L(C) = {p['E']} + {p['A']}·C^-{p['alpha']}")
    for row in a.predictions():
        for key in ("approach3", "approach2", "approach1"):
            if key in row:
                r = row[key]
                lines.append(
                    f"C={row['C']:.3g} ({key}): N_opt={r['N_opt']}, D_opt={r['D_opt']}, "
                    f"tokens/param={r['tokens_per_param']}"
                )
    lines += [f"{k} not fitted: {v}" for k, v in a.skipped.items()]
    return [f"WARNING: {w}" for w in a.warnings()] + lines  # first: they cannot be missed


def run_study(
    base: str,
    budgets: Sequence[float],
    points: int,
    out_dir: Path,
    opts: Options,
    *,
    family: str | None = None,
    widths: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    tokens_per_param: float = 20.0,
    min_steps: int = 20,
    evals_per_run: int = 10,
    extra: Sequence[str] = (),
    threads: int = 1,
) -> tuple[Analysis, list]:
    """plan -> run locally -> collect -> fit -> plot -> report, all under out_dir."""
    from pretrain.config import load_config

    out_dir.mkdir(parents=True, exist_ok=True)
    shape_extra = [f"model.family={family}"] if family else []
    cfg = load_config(base, [*shape_extra, *extra])
    shapes = candidate_shapes(cfg.model.width, cfg.model.num_heads, cfg.model.depth, widths, depths)
    stats_fn = model_stats_fn(base, [*shape_extra, *extra])
    runs = plan_isoflop(
        budgets, points, shapes, stats_fn, cfg.data.global_batch_size,
        base_steps=cfg.schedule.steps, base_warmup=cfg.schedule.warmup_steps,
        tokens_per_param=tokens_per_param, min_steps=min_steps, evals_per_run=evals_per_run,
        family=cfg.model.family,
    )  # fmt: skip
    fixed = parse_sets([*shape_extra, *extra])  # recorded in the sweep, so it can be rerun
    for r in runs:
        r.overrides = {**fixed, **r.overrides}
    write_sweep(out_dir / "sweep.yaml", base, runs)
    sweep = read_sweep(out_dir / "sweep.yaml")
    outcomes = run_sweep(sweep, out_dir / "runs", LOCAL_OVERRIDES, threads)
    got = collect([o.run_dir for o in outcomes])
    write_csv(out_dir / "runs.csv", got.runs, RUN_COLUMNS)
    write_csv(out_dir / "curves.csv", got.curves, CURVE_COLUMNS)
    note = got.runs[0].get("flops_note", "") if got.runs else ""
    curves = read_curves(out_dir / "curves.csv") if got.curves else None
    a = fit_and_report(RunTable(got.runs), curves, opts, out_dir, note)
    return a, outcomes
