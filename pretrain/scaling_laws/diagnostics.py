"""Diagnostics that make a bad study visible in its report: approach 3's residuals grouped by
compute budget and by model size (a law that misses one end of the grid shows as a trend, not
as noise), and a leave-one-budget-out error (refit without each budget, predict its runs): how
well the law extrapolates, which a fit's own residuals never say.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pretrain.scaling_laws.analysis import Analysis
from pretrain.scaling_laws.parametric import fit_parametric
from pretrain.scaling_laws.validate import ScalingDataError


@dataclass
class Group:
    """Residuals log(L_hat) - log(L) of one group of runs."""

    label: float  # the budget, or the model size
    n: int
    mean: float
    max_abs: float

    @classmethod
    def of(cls, label: float, r: np.ndarray) -> Group:
        return cls(float(label), len(r), float(r.mean()), float(np.abs(r).max()))


@dataclass
class LeftOut:
    """Log-loss errors of one budget's runs, predicted by a law fit without them."""

    budget: float
    n: int
    rmse: float
    max_abs: float


@dataclass
class Diagnostics:
    by_budget: list[Group] = field(default_factory=list)
    by_size: list[Group] = field(default_factory=list)
    leave_one_budget_out: list[LeftOut] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"residuals_by_budget": [asdict(g) for g in self.by_budget],
                "residuals_by_size": [asdict(g) for g in self.by_size],
                "leave_one_budget_out": [asdict(g) for g in self.leave_one_budget_out],
                "skipped": self.skipped}  # fmt: skip


def _budget_value(a: Analysis, b) -> float:
    return float(np.exp(np.mean(np.log(a.C[a.budget == b]))))


def diagnose(a: Analysis) -> Diagnostics:
    """Residual groups of the approach-3 fit, and its leave-one-budget-out errors."""
    out = Diagnostics()
    if a.parametric is None:
        out.skipped["residuals"] = "approach 3 was not fitted"
        return out
    r = np.log(a.parametric.law.loss(a.N, a.D)) - np.log(a.L)
    out.by_budget = [Group.of(_budget_value(a, b), r[a.budget == b]) for b in np.unique(a.budget)]
    out.by_size = [Group.of(n, r[a.N == n]) for n in np.unique(a.N)]
    budgets = np.unique(a.budget)
    if len(budgets) < 3:
        out.skipped["leave_one_budget_out"] = f"{len(budgets)} budgets; need at least 3"
        return out
    for b in budgets:
        held = a.budget == b
        try:
            fit = fit_parametric(a.N, a.D, a.L, delta=a.options.delta, holdout=held)
        except ScalingDataError as e:
            out.skipped[f"leave out C={_budget_value(a, b):.3g}"] = str(e)
            continue
        err = np.log(fit.law.loss(a.N[held], a.D[held])) - np.log(a.L[held])
        out.leave_one_budget_out.append(LeftOut(_budget_value(a, b), int(held.sum()),
                                                float(np.sqrt(np.mean(err**2))),
                                                float(np.abs(err).max())))  # fmt: skip
    return out


def render(d: Diagnostics) -> list[str]:
    """Markdown lines for report.md."""
    lines = ["## Diagnostics (approach 3)", ""]
    for title, groups, what in (("Residuals by budget", d.by_budget, "budget C"),
                                ("Residuals by model size", d.by_size, "params N")):  # fmt: skip
        if groups:
            lines += [f"{title}: mean and max |log L_hat − log L| per group (a trend across "
                      "groups means the law's form misses the grid's edge).", "",
                      f"| {what} | runs | mean residual | max abs |",
                      "|---|---|---|---|"]  # fmt: skip
            lines += [f"| {g.label:.3g} | {g.n} | {g.mean:+.4f} | {g.max_abs:.4f} |"
                      for g in groups]  # fmt: skip
            lines.append("")
    if d.leave_one_budget_out:
        lines += ["Leave one budget out: refit without the budget, predict its runs "
                  "(RMSE and max of log-loss error).", "",
                  "| left-out budget C | runs | RMSE | max abs |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {g.budget:.3g} | {g.n} | {g.rmse:.4f} | {g.max_abs:.4f} |"
                  for g in d.leave_one_budget_out]  # fmt: skip
        lines.append("")
    lines += [f"- {k}: {v}" for k, v in d.skipped.items()]
    return lines + ([""] if d.skipped else [])
