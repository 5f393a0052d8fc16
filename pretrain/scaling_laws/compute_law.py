"""Fit (a): the compute frontier L(C) = E + A * C^(-alpha).

Fit with the same robust machinery as approach 3 (Huber on log-loss, L-BFGS from a grid).
The grid is placed relative to the data (the reducible term at the median budget is a fraction
of the median loss), so it works for toy CPU budgets (1e10 FLOPs) and for 1e24 alike.
Typical input: the lowest loss reached at each compute, i.e. the approach-1 envelope or the
Pareto frontier of final losses (see `frontier.pareto_frontier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pretrain.scaling_laws import validate
from pretrain.scaling_laws.bootstrap import resample_counts, run_bootstrap, single_threaded_blas
from pretrain.scaling_laws.huber_fit import (
    HuberProblem,
    best_starts,
    minimize_from,
    predict_log,
    warm_refit,
)
from pretrain.scaling_laws.quality import Estimate, FitQuality, estimates

BOUNDS = [(None, None), (None, None), (0.0, 5.0)]
PARAM_NAMES = ["E", "A", "alpha"]


@dataclass(frozen=True)
class ComputeLaw:
    """L(C) = E + A * C^(-alpha)."""

    E: float
    A: float
    alpha: float

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> ComputeLaw:
        return cls(float(np.exp(theta[0])), float(np.exp(theta[1])), float(theta[2]))

    def loss(self, C) -> np.ndarray:
        return self.E + self.A * np.asarray(C, float) ** -self.alpha

    def values(self) -> np.ndarray:
        return np.array([self.E, self.A, self.alpha])


def data_grid(log_c: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Initialisations scaled to the data: rows [e, a, alpha]."""
    l_min, l_med, c_med = np.exp(y.min()), np.exp(np.median(y)), np.median(log_c)
    rows = [
        [np.log(fe * l_min), np.log(fa * l_med) + alpha * c_med, alpha]
        for fe in (0.05, 0.3, 0.6, 0.9)
        for fa in (0.1, 0.3, 0.6, 1.0)
        for alpha in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
    ]
    return np.array(rows)


@dataclass
class ComputeLawFit:
    law: ComputeLaw
    objective: float
    converged: bool
    delta: float
    quality: FitQuality
    holdout_quality: FitQuality | None
    level: float
    boot_laws: list[ComputeLaw] = field(default_factory=list)
    n_boot_failed: int = 0

    @property
    def params(self) -> dict[str, Estimate]:
        boot = np.array([b.values() for b in self.boot_laws]) if self.boot_laws else None
        return estimates(PARAM_NAMES, self.law.values(), boot, self.level)

    def predict_loss(self, C: float) -> Estimate:
        value = float(self.law.loss(C))
        if not self.boot_laws:
            return Estimate(value)
        reps = np.array([float(b.loss(C)) for b in self.boot_laws])
        tail = 50 * (1 - self.level)
        return Estimate(value, *map(float, np.percentile(reps, [tail, 100 - tail])))

    def band(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of L(C) over the bootstrap laws (for plotting)."""
        reps = np.array([b.loss(C) for b in self.boot_laws])
        tail = 50 * (1 - self.level)
        lo, hi = np.percentile(reps, [tail, 100 - tail], axis=0)
        return lo, hi

    def as_dict(self) -> dict:
        return {
            "law": "L(C) = E + A * C^(-alpha)",
            "params": {k: v.as_dict() for k, v in self.params.items()},
            "objective": self.objective,
            "converged": self.converged,
            "huber_delta": self.delta,
            "quality": self.quality.as_dict(),
            "holdout_quality": self.holdout_quality.as_dict() if self.holdout_quality else None,
            "bootstrap": {
                "n": len(self.boot_laws),
                "failed": self.n_boot_failed,
                "level": self.level,
            },
        }


@dataclass
class _Refit:
    """One bootstrap refit from warm starts (module level: picklable for worker processes)."""

    prob: HuberProblem
    starts: np.ndarray

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        sub = self.prob.with_weights(counts)
        validate.distinct_values("compute C", np.exp(sub.X[:, 0]), 3, "L(C)")
        return warm_refit(self.starts, sub, BOUNDS)


@single_threaded_blas
def fit_compute_law(
    C,
    L,
    *,
    names: list[str] | None = None,
    delta: float = 1e-3,
    holdout: np.ndarray | None = None,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
    top_k: int = 8,
) -> ComputeLawFit:
    """Fit L(C) on the points not in `holdout` (boolean mask); score the holdout."""
    C = validate.positive_array("compute C", C, names)
    L = validate.positive_array("loss", L, names)
    n = validate.same_length(C=C, loss=L)
    if delta <= 0:
        raise validate.ScalingDataError(f"huber delta must be positive, got {delta}")
    train = np.ones(n, bool) if holdout is None else ~np.asarray(holdout, bool)
    if len(train) != n:
        raise validate.ScalingDataError(f"holdout mask has {len(train)} entries for {n} points")
    validate.enough_points("L(C) fit", int(train.sum()), 3)
    validate.distinct_values("compute C", C[train], 3, "L(C)")
    X = np.log(C)[:, None]
    y = np.log(L)
    prob = HuberProblem(X[train], y[train], np.ones(int(train.sum())), delta)
    best = minimize_from(best_starts(data_grid(prob.X[:, 0], prob.y), prob, top_k), prob, BOUNDS)
    quality = FitQuality.of(predict_log(best.theta, prob.X), prob.y)
    held = FitQuality.of(predict_log(best.theta, X[~train]), y[~train]) if (~train).any() else None
    boot_laws: list[ComputeLaw] = []
    failed = 0
    if n_boot > 0:
        refit = _Refit(prob, np.array([best.theta, *best.others[:1]]))
        thetas = run_bootstrap(refit, resample_counts(prob.X.shape[0], n_boot, seed), n_jobs)
        ok = np.all(np.isfinite(thetas), axis=1)
        failed = int((~ok).sum())
        boot_laws = [ComputeLaw.from_theta(t) for t in thetas[ok]]
    return ComputeLawFit(
        ComputeLaw.from_theta(best.theta),
        best.objective,
        best.converged,
        delta,
        quality,
        held,
        level,
        boot_laws,
        failed,
    )
