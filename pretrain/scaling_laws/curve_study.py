"""`pretrain scaling fit-curves`: fit the curve laws to collected runs, predict, plot, report.

runs.csv (schedules) + curves.csv (step, loss) -> one fit per law and per model size ->
curve_fits.json, curve_fits.png (observed vs predicted curves) and curve_report.md. Runs of
different sizes get separate laws: the curve laws describe one model under many schedules.
With `across_sizes`, one LR-annealing law whose coefficients are power laws in the size
(curve_sizes.py) is also fitted to every size not held out, scored on the held-out sizes and
asked for the sizes to predict -> curve_sizes.json, curve_sizes.png and a report section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pretrain.scaling_laws.curve_fit import CurveLawFit, fit_curve_law
from pretrain.scaling_laws.curve_plots import plot_curve_fits, plot_size_fit
from pretrain.scaling_laws.curve_sizes import SizedCurveFit, fit_across_sizes
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
    across_sizes: bool = False  # also fit one law across model sizes (curve_sizes.py)
    holdout_sizes: list[str] = field(default_factory=list)  # parameter counts, or "largest"
    predict_sizes: list[float] = field(default_factory=list)  # sizes never trained
    shared_schedule_terms: bool = False  # across sizes: only L0 depends on the size


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


@dataclass
class CurveStudy:
    """Per-size fits, the law across sizes (if asked for) and its size predictions."""

    sizes: list[SizeFits]
    joint: SizedCurveFit | None = None
    size_predictions: list[dict] = field(default_factory=list)


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
        if opts.across_sizes and (~holdout).sum() < 2:
            continue  # one run of a size feeds the law across sizes, not a law of its own
        fits = {
            law: fit_curve_law(group, law, lam=opts.lam, delta=opts.delta, holdout=holdout,
                               n_boot=opts.n_boot, level=opts.level, seed=opts.seed,
                               n_jobs=opts.n_jobs)  # fmt: skip
            for law in opts.laws
        }
        out.append(SizeFits(params, group, holdout, fits))
    return out


def held_out_sizes(curves: list[ScheduledCurve], texts: list[str]) -> list[float]:
    """The sizes `texts` name: parameter counts of the runs, or "largest"."""
    sizes = sorted({c.params for c in curves})
    out = []
    for text in texts:
        if text == "largest":
            out.append(sizes[-1])
            continue
        try:
            value = float(text)
        except ValueError:
            raise ScalingDataError(f"--holdout-size {text!r}: expected a parameter count or "
                                   f"'largest'") from None  # fmt: skip
        match = [n for n in sizes if abs(n / value - 1) < 1e-3]
        if not match:
            raise ScalingDataError(f"--holdout-size {text}: no run has that many parameters "
                                   f"(sizes: {', '.join(f'{n:g}' for n in sizes)})")  # fmt: skip
        out.append(match[0])
    return sorted(set(out))


def fit_sizes_jointly(curves: list[ScheduledCurve], opts: CurveOptions) -> SizedCurveFit:
    """The law across sizes (min_step applied), held-out sizes scored."""
    curves = [_from_step(c, opts.min_step) for c in curves]
    return fit_across_sizes(
        curves, holdout_sizes=held_out_sizes(curves, opts.holdout_sizes),
        shared=opts.shared_schedule_terms, lam=opts.lam,
        delta=opts.delta, n_boot=opts.n_boot, level=opts.level, seed=opts.seed,
        n_jobs=opts.n_jobs,
    )  # fmt: skip


def size_predictions(fit: SizedCurveFit, curves: list[ScheduledCurve],
                     opts: CurveOptions) -> list[dict]:  # fmt: skip
    """Final loss at each size to predict (and each held-out size), under each schedule to
    predict, else under each schedule the runs were trained with."""
    schedules = opts.predict or list({c.schedule.label(): c.schedule for c in curves}.values())
    sizes = sorted({*opts.predict_sizes, *fit.held_out_sizes})
    return [{"params": n, "schedule": s.label(), **fit.predict_final(s, n).as_dict()}
            for n in sizes for s in schedules]  # fmt: skip


def render_sizes(fit: SizedCurveFit, preds: list[dict]) -> list[str]:
    """The report section of the law across sizes."""
    kind = "shared schedule terms" if fit.shared else "every coefficient a power of n"
    lines = [f"## lr_annealing across sizes ({kind}), λ = {fit.law.lam:g}", "",
             f"`{fit.FORMULA}`, N_ref = {fit.law.n_ref:.4g}; fitted sizes "
             f"{', '.join(f'{n:.3g}' for n in fit.fitted_sizes)}; held out "
             f"{', '.join(f'{n:.3g}' for n in fit.held_out_sizes) or 'none'}.", "",
             "| parameter | estimate | low | high |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v.value:.4g} | {v.lo:.4g} | {v.hi:.4g} |" for k, v in fit.params.items()]
    lines += ["", "| run | N | schedule | role | last step | observed | predicted | error |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['name']} | {r['params']:.3g} | {r['schedule']} | "
              f"{'held out' if r['held_out'] else 'fit'} | {r['last_step']} | "
              f"{r['observed']:.4f} | {r['predicted']:.4f} | {r['rel_error']:+.2%} |"
              for r in fit.runs]  # fmt: skip
    if preds:
        lines += ["", "| N | schedule | predicted final loss | low | high |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {p['params']:.3g} | {p['schedule']} | {p['value']:.4f} | {p['lo']:.4f} | "
                  f"{p['hi']:.4f} |" for p in preds]  # fmt: skip
    return [*lines, "", "![curves across sizes](curve_sizes.png)", ""]


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
                          out_dir: Path) -> CurveStudy:  # fmt: skip
    """Fit, then write curve_fits.json, curve_fits.png and curve_report.md into out_dir (and
    curve_sizes.json, curve_sizes.png with `across_sizes`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    joint = fit_sizes_jointly(curves, opts) if opts.across_sizes else None  # bad input first
    sizes = fit_sizes(curves, opts)
    study = CurveStudy(sizes, joint, size_predictions(joint, curves, opts) if joint else [])
    doc = [{"params": s.params, "fits": {k: f.as_dict() for k, f in s.fits.items()},
            "predictions": s.predictions(opts.predict)} for s in sizes]  # fmt: skip
    (out_dir / "curve_fits.json").write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
    if sizes:
        plot_curve_fits(sizes, opts.predict, out_dir / "curve_fits.png")
    report = render(sizes, opts)
    if joint is not None:
        doc = {**joint.as_dict(), "predictions": study.size_predictions}
        (out_dir / "curve_sizes.json").write_text(json.dumps(_jsonable(doc), indent=2) + "\n")
        plot_size_fit(joint, [c for c in curves if c.steps.max() >= opts.min_step],
                      out_dir / "curve_sizes.png")  # fmt: skip
        report += "\n".join(render_sizes(joint, study.size_predictions))
    (out_dir / "curve_report.md").write_text(report)
    return study


def summary(study: CurveStudy, opts: CurveOptions) -> list[str]:
    lines = []
    for size in study.sizes:
        for law, fit in size.fits.items():
            params = ", ".join(f"{k}={v}" for k, v in fit.params.items())
            lines.append(f"N={size.params:.3g} {law}: {params}")
            lines += [f"  {r['name']} ({'held out' if r['held_out'] else 'fit'}): final loss "
                      f"{r['observed']:.4f}, law {r['predicted']:.4f} ({r['rel_error']:+.2%})"
                      for r in fit.runs]  # fmt: skip
        lines += [f"  predicted {p['schedule']} ({p['law']}): {p['value']:.4f} "
                  f"[{p['lo']:.4f}, {p['hi']:.4f}]"
                  for p in size.predictions(opts.predict)]  # fmt: skip
    if study.joint is not None:
        fit = study.joint
        params = ", ".join(f"{k}={v}" for k, v in fit.params.items())
        lines.append(f"across sizes (N_ref={fit.law.n_ref:.3g}): {params}")
        lines += [f"  {r['name']} (N={r['params']:.3g}, {'held out' if r['held_out'] else 'fit'}):"
                  f" final loss {r['observed']:.4f}, law {r['predicted']:.4f} "
                  f"({r['rel_error']:+.2%})" for r in fit.runs]  # fmt: skip
        lines += [f"  predicted N={p['params']:.3g} {p['schedule']}: {p['value']:.4f} "
                  f"[{p['lo']:.4f}, {p['hi']:.4f}]" for p in study.size_predictions]  # fmt: skip
    return lines
