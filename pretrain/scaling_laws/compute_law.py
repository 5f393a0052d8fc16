"""Fit (a): the compute frontier L(C) = E + A * C^(-alpha).

Fit with the same robust machinery as approach 3 (Huber on log-loss, L-BFGS from a grid).
The grid is placed relative to the data (the reducible term at the median budget is a fraction
of the median loss), so it works for toy CPU budgets (1e10 FLOPs) and for 1e24 alike.
Typical input: the lowest loss reached at each compute, i.e. the approach-1 envelope or the
Pareto frontier of final losses (see `frontier.pareto_frontier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pretrain.scaling_laws import validate
from pretrain.scaling_laws.bootstrap import percentile_interval, single_threaded_blas
from pretrain.scaling_laws.huber_fit import HuberProblem, LawFit, fit_huber_law
from pretrain.scaling_laws.quality import Estimate

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
class ComputeLawFit(LawFit):
    FORMULA: ClassVar[str] = "L(C) = E + A * C^(-alpha)"
    PARAM_NAMES: ClassVar[list[str]] = PARAM_NAMES

    law: ComputeLaw
    boot_laws: list[ComputeLaw] = field(default_factory=list)

    def predict_loss(self, C: float) -> Estimate:
        return self.interval(lambda law: law.loss(C))

    def band(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of L(C) over the bootstrap laws (for plotting)."""
        return percentile_interval(np.array([b.loss(C) for b in self.boot_laws]), self.level)


def _check_resample(prob: HuberProblem) -> None:
    validate.distinct_values("compute C", np.exp(prob.X[:, 0]), 3, "L(C)")


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
    validate.huber_delta(delta)
    train = validate.train_mask(holdout, n, "points")
    validate.enough_points("L(C) fit", int(train.sum()), 3)
    validate.distinct_values("compute C", C[train], 3, "L(C)")
    X = np.log(C)[:, None]
    y = np.log(L)
    grid = data_grid(X[train, 0], y[train])
    fit = fit_huber_law(
        X, y, train, delta, grid, BOUNDS, _check_resample,
        top_k=top_k, n_boot=n_boot, seed=seed, n_jobs=n_jobs,
    )  # fmt: skip
    return ComputeLawFit.of(fit, ComputeLaw.from_theta, delta, level)
