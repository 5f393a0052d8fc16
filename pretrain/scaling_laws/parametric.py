"""Approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to final losses of many runs.

The fit follows Besiroglu et al. (2024), who showed that Hoffmann et al.'s published fit was off
because of how it was optimised: Huber loss (delta = 1e-3) on log-loss residuals, log-sum-exp
parametrization, L-BFGS from the best points of their initialisation grid
(e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, alpha, beta in {0, 0.5, ..., 2}), and
intervals from a bootstrap over runs. The compute-optimal allocation under C = k N D
(k = 6: forward plus backward of a dense transformer, attention ignored) is closed-form:

    N_opt = G (C/k)^(beta/(alpha+beta)),  D_opt = (C/k) / N_opt,
    G = (alpha A / (beta B))^(1/(alpha+beta)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from pretrain.scaling_laws import validate
from pretrain.scaling_laws.bootstrap import single_threaded_blas
from pretrain.scaling_laws.huber_fit import HuberProblem, LawFit, fit_huber_law, make_grid
from pretrain.scaling_laws.quality import Estimate

DEFAULT_GRID = make_grid(
    [
        np.arange(-1.0, 1.01, 0.5),  # e = log E
        np.arange(0.0, 25.1, 5.0),  # a = log A
        np.arange(0.0, 2.01, 0.5),  # alpha
        np.arange(0.0, 25.1, 5.0),  # b = log B
        np.arange(0.0, 2.01, 0.5),  # beta
    ]
)
# alpha, beta kept in a physical range; log-coefficients free.
BOUNDS = [(None, None), (None, None), (0.0, 5.0), (None, None), (0.0, 5.0)]
PARAM_NAMES = ["E", "A", "B", "alpha", "beta", "a", "b"]


@dataclass(frozen=True)
class ParametricLaw:
    """L(N, D) = E + A / N^alpha + B / D^beta with its compute-optimal frontier."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> ParametricLaw:
        e, a, alpha, b, beta = (float(x) for x in theta)
        return cls(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), alpha, beta)

    @property
    def theta(self) -> np.ndarray:
        return np.array([np.log(self.E), np.log(self.A), self.alpha, np.log(self.B), self.beta])

    def loss(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    @property
    def a(self) -> float:
        """Exponent of N_opt in C (NaN when alpha = beta = 0: no frontier)."""
        return _ratio(self.beta, self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C (NaN when alpha = beta = 0: no frontier)."""
        return _ratio(self.alpha, self.alpha + self.beta)

    def compute_optimal(self, C, k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) minimising L subject to k * N * D = C; NaN where alpha or beta is 0
        (a term that does not shrink has no optimum: a bootstrap replicate at the search bound
        is then left out of the interval instead of ending the fit with ZeroDivisionError)."""
        C = np.asarray(C, float)
        if self.alpha <= 0 or self.beta <= 0:
            nan = np.full_like(C, np.nan)
            return nan, nan.copy()
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n_opt = G * (C / k) ** self.a
        return n_opt, (C / k) / n_opt

    def values(self) -> np.ndarray:
        return np.array([self.E, self.A, self.B, self.alpha, self.beta, self.a, self.b])


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


@dataclass
class ParametricFit(LawFit):
    """Result of `fit_parametric`: the law, its fit statistics and bootstrap replicates."""

    FORMULA: ClassVar[str] = "L(N, D) = E + A / N^alpha + B / D^beta"
    PARAM_NAMES: ClassVar[list[str]] = PARAM_NAMES

    law: ParametricLaw
    boot_laws: list[ParametricLaw] = field(default_factory=list)
    n_starts: int = 0

    def predict_loss(self, N: float, D: float) -> Estimate:
        """Loss of a model with N parameters trained on D tokens, with interval."""
        return self.interval(lambda law: law.loss(N, D))

    def compute_optimal(self, C: float, k: float = 6.0) -> dict[str, Estimate]:
        """Compute-optimal N, D, tokens per parameter and loss at budget C (C = k N D)."""
        return {
            "N_opt": self.interval(lambda law: law.compute_optimal(C, k)[0]),
            "D_opt": self.interval(lambda law: law.compute_optimal(C, k)[1]),
            "tokens_per_param": self.interval(
                lambda law: np.divide(*law.compute_optimal(C, k)[::-1])
            ),
            "loss": self.interval(lambda law: law.loss(*law.compute_optimal(C, k))),
        }

    def search_stats(self) -> dict:
        return {"n_starts": self.n_starts}


def _check_resample(prob: HuberProblem) -> None:
    validate.distinct_values("params N", np.exp(prob.X[:, 0]), 2, "L(N, D)")
    validate.distinct_values("tokens D", np.exp(prob.X[:, 1]), 2, "L(N, D)")


@single_threaded_blas
def fit_parametric(
    N,
    D,
    L,
    *,
    names: list[str] | None = None,
    delta: float = 1e-3,
    holdout: np.ndarray | None = None,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
    top_k: int = 16,
    boot_starts: int = 2,
    grid: np.ndarray | None = None,
) -> ParametricFit:
    """Fit approach 3 on the runs not in `holdout` (a boolean mask) and score the holdout.

    top_k: L-BFGS starts taken from the lowest-objective grid points.
    boot_starts: starts per bootstrap refit (the full-data optimum and the next-best distinct
    local minima): resamples stay near the full-data basin, which keeps 1000 refits cheap.
    """
    N = validate.positive_array("params N", N, names)
    D = validate.positive_array("tokens D", D, names)
    L = validate.positive_array("loss", L, names)
    n = validate.same_length(N=N, D=D, loss=L)
    validate.huber_delta(delta)
    train = validate.train_mask(holdout, n, "runs")
    validate.enough_points("L(N, D) fit", int(train.sum()), 5)
    validate.distinct_values("params N", N[train], 2, "L(N, D)")
    validate.distinct_values("tokens D", D[train], 2, "L(N, D)")
    X = np.column_stack([np.log(N), np.log(D)])
    y = np.log(L)
    validate.not_collinear(X[train, 0], X[train, 1])
    fit = fit_huber_law(
        X, y, train, delta, DEFAULT_GRID if grid is None else grid, BOUNDS, _check_resample,
        top_k=top_k, n_boot=n_boot, seed=seed, n_jobs=n_jobs, boot_starts=boot_starts,
    )  # fmt: skip
    return ParametricFit.of(fit, ParametricLaw.from_theta, delta, level, n_starts=fit.best.n_starts)
