"""`pretrain scaling fit-curves`: fit the curve laws to collected runs, predict, plot, report.

runs.csv (schedules) + curves.csv (step, loss) -> one fit per law and per model size ->
curve_fits.json, curve_fits.png (observed vs predicted curves) and curve_report.md. Runs of
different sizes get separate laws: the curve laws describe one model under many schedules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pretrain.scaling_laws.curve_fit import CurveLawFit, fit_curve_law
from pretrain.scaling_laws.curve_plots import plot_curve_fits
from pretrain.scaling_laws.schedule_curves import Schedule, ScheduledCurve
from pretrain.scaling_laws.study import _jsonable
from pretrain.scaling_laws.validate import ScalingDataError


@dataclass
class CurveOptions:
    laws: list[str]
    holdout: list[str] = field(default_factory=list)  # run names scored, not fitted
    predict: list[Schedule] = field(default_factory=list)  # schedules never trained
    lam: float | None = 0.999  # None: chosen by the fit objective (curve_fit.LAM_GRID)
    min_step: int = 0  # evaluations before this step are left out (the early transient)
    delta: float = 1e-3
    n_boot: int = 200
    level: float = 0.95
    seed: int = 0
    n_jobs: int = 1


@dataclass
class SizeFits:
    """The fits of every law to the curves of one model size."""

    params: float
    curves: list[ScheduledCurve]
    holdout: np.ndarray
    fits: dict[str, CurveLawFit]

    def predictions(self, schedules: list[Schedule]) -> list[dict]:
        return [{"schedule": s.label(), "law": law, **fit.predict_final(s).as_dict()}
                for s in schedules for law, fit in self.fits.items()]  # fmt: skip


def _from_step(c: ScheduledCurve, min_step: int) -> ScheduledCurve:
    keep = c.steps >= min_step
    if not keep.any():
        raise ScalingDataError(f"run {c.name!r} has no evaluation at or after step {min_step}")
    return replace(c, steps=c.steps[keep], loss=c.loss[keep])


def fit_sizes(curves: list[ScheduledCurve], opts: CurveOptions) -> list[SizeFits]:
    """Group curves by model size and fit every law to each group (held-out runs scored)."""
    unknown = sorted(set(opts.holdout) - {c.name for c in curves})
    if unknown:
        raise ScalingDataError(f"--holdout {', '.join(unknown)}: no curve of that run")
    curves = [_from_step(c, opts.min_step) for c in curves]
    out = []
    for params in sorted({c.params for c in curves}):
        group = [c for c in curves if c.params == params]
        holdout = np.array([c.name in opts.holdout for c in group])
        fits = {
            law: fit_curve_law(group, law, lam=opts.lam, delta=opts.delta, holdout=holdout,
                               n_boot=opts.n_boot, level=opts.level, seed=opts.seed,
                               n_jobs=opts.n_jobs)  # fmt: skip
            for law in opts.laws
        }
        out.append(SizeFits(params, group, holdout, fits))
    return out


def render(sizes: list[SizeFits], opts: CurveOptions) -> str:
    lines = ["# Loss-curve laws under LR schedules", "",
             f"Bootstrap: {opts.n_boot} resamples of runs, {opts.level:.0%} percentile intervals; "
             f"Huber δ = {opts.delta:g} on relative residuals; evaluations from step "
             f"{opts.min_step}.", ""]  # fmt: skip
    for size in sizes:
        for law, fit in size.fits.items():
            lam = f", λ = {fit.law.lam:g}" if law == "lr_annealing" else ""
            lines += [f"## {law}, N = {size.params:.3g}{lam}", "", f"`{fit.FORMULA}`", "",
                      "| parameter | estimate | low | high |", "|---|---|---|---|"]  # fmt: skip
            lines += [f"| {k} | {v.value:.4g} | {v.lo:.4g} | {v.hi:.4g} |"
                      for k, v in fit.params.items()]  # fmt: skip
            lines += ["", "| run | schedule | role | last step | observed | predicted | error |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| {r['name']} | {r['schedule']} | {'held out' if r['held_out'] else 'fit'}"
                      f" | {r['last_step']} | {r['observed']:.4f} | {r['predicted']:.4f} | "
                      f"{r['rel_error']:+.2%} |" for r in fit.runs]  # fmt: skip
            if (~size.holdout).sum() < 3 and opts.n_boot:
                lines.append("With 2 fitted runs every usable bootstrap resample draws both "
                             "once: the intervals are the estimate (fit 3 or more runs).")
            lines.append("")
        preds = size.predictions(opts.predict)
        if preds:
            lines += ["| predicted schedule | law | final loss | low | high |",
                      "|---|---|---|---|---|"]
            lines += [f"| {p['schedule']} | {p['law']} | {p['value']:.4f} | {p['lo']:.4f} | "
                      f"{p['hi']:.4f} |" for p in preds]  # fmt: skip
            lines.append("")
    lines += ["![curve fits](curve_fits.png)", ""]
    return "\n".join(lines)


def fit_curves_and_report(curves: list[ScheduledCurve], opts: CurveOptions,
                          out_dir: Path) -> list[SizeFits]:  # fmt: skip
    """Fit, then write curve_fits.json, curve_fits.png and curve_report.md into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = fit_sizes(curves, opts)
    doc = [{"params": s.params, "fits": {k: f.as_dict() for k, f in s.fits.items()},
            "predictions": s.predictions(opts.predict)} for s in sizes]  # fmt: skip
    (out_dir / "curve_fits.json").write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    plot_curve_fits(sizes, opts.predict, out_dir / "curve_fits.png")
    (out_dir / "curve_report.md").write_text(render(sizes, opts))
    return sizes


def summary(sizes: list[SizeFits], opts: CurveOptions) -> list[str]:
    lines = []
    for size in sizes:
        for law, fit in size.fits.items():
            params = ", ".join(f"{k}={v}" for k, v in fit.params.items())
            lines.append(f"N={size.params:.3g} {law}: {params}")
            lines += [f"  {r['name']} ({'held out' if r['held_out'] else 'fit'}): final loss "
                      f"{r['observed']:.4f}, law {r['predicted']:.4f} ({r['rel_error']:+.2%})"
                      for r in fit.runs]  # fmt: skip
        lines += [f"  predicted {p['schedule']} ({p['law']}): {p['value']:.4f} "
                  f"[{p['lo']:.4f}, {p['hi']:.4f}]"
                  for p in size.predictions(opts.predict)]  # fmt: skip
    return lines
