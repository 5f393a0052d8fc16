"""Run every applicable fit on a runs table (and curves) and gather the predictions.

One approach failing (too few budgets for IsoFLOP profiles, no curves for the envelope) does
not stop the others; its reason is kept and reported. The compute-optimal allocation of
approach 3 uses C = k N D with k measured from the runs' own FLOPs accounting (median of
C / (N D)), so it agrees with approaches 1 and 2, which use the logged FLOPs directly; k = 6 is
the dense-transformer forward+backward value without attention, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pretrain.scaling_laws.bootstrap import default_jobs
from pretrain.scaling_laws.compute_law import ComputeLawFit, fit_compute_law
from pretrain.scaling_laws.envelope import Curve, EnvelopeFit, fit_envelope, pareto_frontier
from pretrain.scaling_laws.isoflop import IsoFLOPFit, fit_isoflop, group_budgets
from pretrain.scaling_laws.parametric import ParametricFit, fit_parametric
from pretrain.scaling_laws.table import RunTable
from pretrain.scaling_laws.validate import ScalingDataError, positive_array


@dataclass
class Options:
    n_boot: int = 1000
    level: float = 0.95
    delta: float = 1e-3
    seed: int = 0
    n_jobs: int = field(default_factory=default_jobs)
    holdout_largest: int = 0  # hold out the runs of the K largest compute budgets
    params_column: str = "params"  # or params_non_embedding
    k_flops: float | None = None  # C = k N D for approach 3; None = measured from the runs
    targets: list[float] = field(default_factory=list)  # budgets to predict N_opt, D_opt at
    predict_nd: list[tuple[float, float]] = field(default_factory=list)
    min_progress: float = 0.1  # approach 1: ignore the first part of each curve
    budget_rtol: float = 0.25


MIN_R2 = 0.5  # a fit explaining less of the variance than this is flagged, whatever it converged to


@dataclass
class Analysis:
    names: list[str]
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    budget: np.ndarray  # budget group label per run
    holdout: np.ndarray
    k_flops: float
    k_measured: float
    options: Options
    curves: list[Curve] = field(default_factory=list)
    parametric: ParametricFit | None = None
    isoflop: IsoFLOPFit | None = None
    envelope: EnvelopeFit | None = None
    compute: ComputeLawFit | None = None
    frontier_source: str = ""
    frontier_C: np.ndarray = field(default_factory=lambda: np.empty(0))
    frontier_L: np.ndarray = field(default_factory=lambda: np.empty(0))
    skipped: dict[str, str] = field(default_factory=dict)  # approach -> why it did not run

    def warnings(self) -> list[str]:
        """Signs that a fit is not constrained by these runs; shown first in the report."""
        out = []
        for label, fit in (("approach 3", self.parametric), ("approach 2", self.isoflop),
                           ("compute frontier", self.compute)):
            quality = getattr(fit, "quality", None)
            if quality is not None and quality.r2 < MIN_R2:  # NaN (one point) is not flagged
                out.append(f"{label}: R² = {quality.r2:.2f} < {MIN_R2}: the law does not describe "
                           "these runs (losses of different measures mixed? too few budgets?)")
        l_min = float(self.L.min())
        if self.parametric:
            law = self.parametric.law
            if law.E < 1e-3 * l_min:
                out.append(f"approach 3: E = {law.E:.3g} collapsed towards 0; the irreducible "
                           "loss is not identified by these runs")  # fmt: skip
            for name in ("alpha", "beta"):
                v = getattr(law, name)
                if v <= 1e-3 or v >= 4.99:
                    out.append(f"approach 3: {name} = {v:.3g} sits at its bound [0, 5]")
        if self.isoflop:
            used = sum(p.usable for p in self.isoflop.profiles)
            if used < 3:
                out.append(f"approach 2: power laws through only {used} budget minima")
        if self.compute and self.compute.law.E < 1e-3 * l_min:
            out.append("compute frontier: E collapsed towards 0 (no visible saturation)")
        for row in self.predictions():
            for key in ("approach3", "approach2", "approach1"):
                est = row.get(key, {}).get("N_opt")
                if est is not None and est.lo > 0 and est.hi / est.lo > 100:
                    out.append(f"{key}: the N_opt interval at C={row['C']:.3g} spans "
                               f"{est.hi / est.lo:.0f}x")  # fmt: skip
        return out

    def predictions(self) -> list[dict]:
        """Per target budget and approach: N_opt, D_opt, tokens/param (and loss) with intervals."""
        out = []
        for C in self.options.targets:
            row: dict = {"C": C}
            if self.parametric:
                row["approach3"] = self.parametric.compute_optimal(C, self.k_flops)
            if self.isoflop:
                row["approach2"] = self.isoflop.compute_optimal(C)
            if self.envelope:
                row["approach1"] = self.envelope.compute_optimal(C)
            if self.compute:
                row["compute_law_loss"] = self.compute.predict_loss(C)
            out.append(row)
        return out

    def loss_predictions(self) -> list[dict]:
        if not self.parametric:
            return []
        return [
            {"N": n, "D": d, "loss": self.parametric.predict_loss(n, d)}
            for n, d in self.options.predict_nd
        ]

    def as_dict(self) -> dict:
        def conv(x):
            if hasattr(x, "as_dict"):
                return x.as_dict()
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [conv(v) for v in x]
            return x

        return {
            "n_runs": len(self.names),
            "n_budgets": int(len(np.unique(self.budget))),
            "held_out_runs": [n for n, h in zip(self.names, self.holdout) if h],
            "flops_per_param_token": {"used": self.k_flops, "measured": self.k_measured},
            "approach3_parametric": conv(self.parametric),
            "approach2_isoflop": conv(self.isoflop),
            "approach1_envelope": conv(self.envelope),
            "compute_law": conv(self.compute),
            "compute_law_frontier": self.frontier_source,
            "skipped": self.skipped,
            "warnings": self.warnings(),
            "predictions": conv(self.predictions()),
            "loss_predictions": conv(self.loss_predictions()),
        }


def analyze(table: RunTable, curves: list[Curve] | None, opts: Options) -> Analysis:
    names = table.names
    N = positive_array(opts.params_column, table.column(opts.params_column), names)
    D = positive_array("tokens", table.column("tokens"), names)
    C = positive_array("flops", table.column("flops"), names)
    L = positive_array("loss", table.column("loss"), names)
    budget = group_budgets(C, opts.budget_rtol)
    holdout = np.zeros(len(N), bool)
    if opts.holdout_largest:
        top = np.unique(budget)[-opts.holdout_largest :]
        holdout = np.isin(budget, top)
        if holdout.all():
            raise ScalingDataError(
                f"holdout of the {opts.holdout_largest} largest budget(s) leaves no runs to fit"
            )
    k_measured = float(np.median(C / (N * D)))
    k = opts.k_flops or k_measured
    a = Analysis(names, N, D, C, L, budget, holdout, k, k_measured, opts, curves or [])
    common = dict(n_boot=opts.n_boot, level=opts.level, seed=opts.seed, n_jobs=opts.n_jobs)

    try:
        a.parametric = fit_parametric(
            N, D, L, names=names, delta=opts.delta, holdout=holdout, **common
        )
    except ScalingDataError as e:
        a.skipped["approach3"] = str(e)
    try:
        a.isoflop = fit_isoflop(N, D, C, L, budgets=budget, names=names, holdout=holdout, **common)
    except ScalingDataError as e:
        a.skipped["approach2"] = str(e)
    if curves:
        try:
            a.envelope = fit_envelope(curves, min_progress=opts.min_progress, **common)
        except ScalingDataError as e:
            a.skipped["approach1"] = str(e)
    else:
        a.skipped["approach1"] = "no training curves given (collect writes curves.csv)"

    # The compute frontier: the approach-1 envelope when curves exist, else the Pareto frontier.
    if a.envelope is not None:
        a.frontier_source = "envelope of training curves"
        a.frontier_C, a.frontier_L = a.envelope.env.C, a.envelope.env.L
    else:
        idx = pareto_frontier(C, L)
        a.frontier_source = "Pareto frontier of final losses"
        a.frontier_C, a.frontier_L = C[idx], L[idx]
    cut = C[holdout].min() if holdout.any() else np.inf
    try:
        a.compute = fit_compute_law(
            a.frontier_C, a.frontier_L, delta=opts.delta, holdout=a.frontier_C >= cut, **common
        )
    except ScalingDataError as e:
        a.skipped["compute_law"] = str(e)
    return a
