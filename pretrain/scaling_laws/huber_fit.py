"""Robust fitting of sums of power laws in log space (the engine behind approaches 3 and (a)).

Both laws have the form  L = E + sum_k A_k * x_k^(-alpha_k).  Following Besiroglu et al. (2024)
they are fit on log-loss with a log-sum-exp parametrization,

    log L_hat = LSE(e, a_1 - alpha_1 log x_1, ..., a_m - alpha_m log x_m),
    E = exp(e),  A_k = exp(a_k),

by minimising the Huber loss of r = log L_hat - log L with L-BFGS from the best points of a
grid of initialisations. Fitting in log space weighs every run by its relative error; the Huber
loss (quadratic below delta, linear above) keeps a few diverged or mislogged runs from dragging
the exponents. Parameter vector layout: theta = [e, a_1, alpha_1, ..., a_m, alpha_m].

Run weights are integer bootstrap counts (or 1s): resampling runs with replacement is the same
as weighting each run by how often it was drawn, so bootstrap fits never copy the data.
`fit_huber_law` is the whole procedure a law runs (grid starts, L-BFGS, quality on the fitted and
held-out runs, warm-started bootstrap); a law adds its features, grid, bounds and checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize

from pretrain.scaling_laws.bootstrap import replicates
from pretrain.scaling_laws.quality import (
    Estimate,
    FitQuality,
    bootstrap_summary,
    estimates,
    with_interval,
)

Bounds = list[tuple[float | None, float | None]]

# Keep each grid-evaluation chunk near this many (grid point x run) entries: fast, bounded memory.
_CHUNK_ENTRIES = 1_000_000


@dataclass
class HuberProblem:
    """log features X (n x m), log-loss y (n), weights w (n) and the Huber threshold delta."""

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    delta: float

    def with_weights(self, w: np.ndarray) -> HuberProblem:
        """The same problem restricted to runs of non-zero weight (cheaper to evaluate)."""
        keep = w > 0
        return HuberProblem(self.X[keep], self.y[keep], w[keep].astype(float), self.delta)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r^2/2 inside [-delta, delta], delta*(|r| - delta/2) outside."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _terms(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Stack of log-terms (n x (m+1)) for one theta."""
    a = theta[1::2]
    alpha = theta[2::2]
    return np.column_stack([np.full(X.shape[0], theta[0]), a - X * alpha])


def predict_log(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log L_hat for one parameter vector."""
    t = _terms(theta, X)
    tmax = t.max(axis=1, keepdims=True)
    return (tmax + np.log(np.exp(t - tmax).sum(axis=1, keepdims=True)))[:, 0]


def objective(theta: np.ndarray, prob: HuberProblem) -> tuple[float, np.ndarray]:
    """Weighted mean Huber loss of log residuals over delta, and its gradient.

    Dividing by delta keeps values and gradients O(1) whatever delta is, so L-BFGS's default
    tolerances mean the same thing for every delta.
    """
    t = _terms(theta, prob.X)
    tmax = t.max(axis=1, keepdims=True)
    ex = np.exp(t - tmax)
    s = ex.sum(axis=1, keepdims=True)
    r = (tmax + np.log(s))[:, 0] - prob.y
    p = ex / s  # d(log L_hat)/d(term_k)
    wsum = prob.w.sum()
    f = float(prob.w @ huber(r, prob.delta)) / (prob.delta * wsum)
    g_r = prob.w * np.clip(r, -prob.delta, prob.delta) / (prob.delta * wsum)
    grad = np.empty_like(theta)
    grad[0] = g_r @ p[:, 0]
    gp = g_r[:, None] * p[:, 1:]
    grad[1::2] = gp.sum(axis=0)
    grad[2::2] = -(gp * prob.X).sum(axis=0)
    return f, grad


def grid_objective(grid: np.ndarray, prob: HuberProblem) -> np.ndarray:
    """Objective at every row of `grid` (G x p), vectorised in chunks."""
    n = prob.X.shape[0]
    out = np.empty(grid.shape[0])
    step = max(1, _CHUNK_ENTRIES // max(n, 1))
    wsum = prob.w.sum()
    for lo in range(0, grid.shape[0], step):
        g = grid[lo : lo + step]
        terms = [np.broadcast_to(g[:, :1], (g.shape[0], n))]
        for k in range(prob.X.shape[1]):
            terms.append(g[:, 1 + 2 * k, None] - g[:, 2 + 2 * k, None] * prob.X[None, :, k])
        t = np.stack(terms)
        tmax = t.max(axis=0)
        r = tmax + np.log(np.exp(t - tmax).sum(axis=0)) - prob.y
        out[lo : lo + step] = huber(r, prob.delta) @ prob.w / (prob.delta * wsum)
    return out


def make_grid(axes: list[np.ndarray]) -> np.ndarray:
    """Cartesian product of per-parameter value lists, one row per initialisation."""
    mesh = np.meshgrid(*[np.asarray(a, float) for a in axes], indexing="ij")
    return np.column_stack([m.ravel() for m in mesh])


@dataclass
class Minimum:
    """Best parameter vector found, its objective, and how the search went."""

    theta: np.ndarray
    objective: float
    converged: bool
    n_starts: int
    others: list[np.ndarray]  # other local minima, best first: warm starts for bootstrap fits


def minimize_from(
    starts: np.ndarray,
    prob: HuberProblem,
    bounds: Bounds,
    maxiter: int = 500,
) -> Minimum:
    """Run L-BFGS-B from each start; keep the lowest objective."""
    found: list[tuple[float, np.ndarray, bool]] = []
    for x0 in starts:
        res = minimize(
            objective,
            x0,
            args=(prob,),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-9},
        )
        if not np.all(np.isfinite(res.x)) or not np.isfinite(res.fun):
            continue
        found.append((float(res.fun), res.x.copy(), bool(res.success)))
    if not found:
        raise RuntimeError("every L-BFGS start diverged; check the data for extreme values")
    found.sort(key=lambda item: item[0])
    f0, x0, ok = found[0]
    others: list[np.ndarray] = []
    for _, x, _ in found[1:]:
        if all(np.abs(x - y).max() > 1e-3 for y in [x0, *others]):
            others.append(x)
    return Minimum(x0, f0, ok, len(starts), others)


def warm_refit(starts: np.ndarray, prob: HuberProblem, bounds: Bounds) -> np.ndarray:
    """Bootstrap refit: L-BFGS from starts[0] (the full-data optimum); each other start (another
    local minimum of the full data) is optimised only if it already beats that result, which
    a competing basin must do to matter. Halves the cost of 1000 refits."""
    best = minimize_from(starts[:1], prob, bounds)
    for x0 in starts[1:]:
        if objective(x0, prob)[0] < best.objective:
            other = minimize_from(x0[None, :], prob, bounds)
            if other.objective < best.objective:
                best = other
    return best.theta


def best_starts(grid: np.ndarray, prob: HuberProblem, k: int) -> np.ndarray:
    """The k grid points of lowest objective: cheap to find, and they seed L-BFGS."""
    if k >= len(grid):
        return grid
    vals = grid_objective(grid, prob)
    idx = np.argpartition(vals, k)[:k]
    return grid[idx[np.argsort(vals[idx])]]


@dataclass
class HuberFit:
    """A law fit on the training runs: the minimum, its quality on them and on the holdout, and
    the parameter vectors of the successful bootstrap refits (one row each)."""

    best: Minimum
    quality: FitQuality
    holdout_quality: FitQuality | None
    boot: np.ndarray
    n_boot_failed: int


@dataclass
class _Refit:
    """One bootstrap refit from warm starts (module level: picklable for worker processes).
    `check` (a module-level function) rejects a degenerate resample before fitting it."""

    prob: HuberProblem
    starts: np.ndarray
    bounds: Bounds
    check: Callable[[HuberProblem], None]

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        sub = self.prob.with_weights(counts)
        self.check(sub)
        return warm_refit(self.starts, sub, self.bounds)


def fit_huber_law(
    X: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    delta: float,
    grid: np.ndarray,
    bounds: Bounds,
    check: Callable[[HuberProblem], None],
    *,
    top_k: int,
    n_boot: int,
    seed: int,
    n_jobs: int,
    boot_starts: int = 2,
) -> HuberFit:
    """Fit log features X to log-loss y on the `train` runs, score the others, bootstrap.

    L-BFGS starts from the `top_k` best rows of `grid`; each bootstrap refit starts from the
    full-data optimum and the next `boot_starts - 1` distinct local minima.
    """
    prob = HuberProblem(X[train], y[train], np.ones(int(train.sum())), delta)
    best = minimize_from(best_starts(grid, prob, top_k), prob, bounds)
    quality = FitQuality.of(predict_log(best.theta, prob.X), prob.y)
    held = FitQuality.of(predict_log(best.theta, X[~train]), y[~train]) if (~train).any() else None
    boot, failed = np.empty((0, len(best.theta))), 0
    if n_boot > 0:
        starts = np.array([best.theta, *best.others[: max(0, boot_starts - 1)]])
        refit = _Refit(prob, starts, bounds, check)
        boot, failed = replicates(refit, prob.X.shape[0], n_boot, seed, n_jobs)
    return HuberFit(best, quality, held, boot, failed)


@dataclass
class LawFit:
    """A law fit by `fit_huber_law` (approaches 3 and (a)): the law, how the search went, its
    quality, and the laws of the bootstrap refits. A subclass names its formula and the
    parameters its law's `values()` returns."""

    FORMULA: ClassVar[str]
    PARAM_NAMES: ClassVar[list[str]]

    law: Any  # has values() in PARAM_NAMES order
    objective: float
    converged: bool
    delta: float
    quality: FitQuality
    holdout_quality: FitQuality | None
    level: float
    boot_laws: list = field(default_factory=list)
    n_boot_failed: int = 0

    @classmethod
    def of(cls, fit: HuberFit, from_theta: Callable[[np.ndarray], Any], delta: float,
           level: float, **extra):  # fmt: skip
        """The subclass's result from a HuberFit, its laws built by `from_theta`."""
        laws = [from_theta(t) for t in fit.boot]
        best = fit.best
        return cls(from_theta(best.theta), best.objective, best.converged, delta, fit.quality,
                   fit.holdout_quality, level, laws, fit.n_boot_failed, **extra)  # fmt: skip

    @property
    def params(self) -> dict[str, Estimate]:
        boot = np.array([b.values() for b in self.boot_laws]) if self.boot_laws else None
        return estimates(self.PARAM_NAMES, self.law.values(), boot, self.level)

    def interval(self, fn: Callable[[Any], float]) -> Estimate:
        """fn(law) with the percentile interval of fn over the bootstrap laws."""
        reps = [float(fn(b)) for b in self.boot_laws]
        return with_interval(float(fn(self.law)), reps, self.level)

    def search_stats(self) -> dict:
        """What a subclass reports about the search, after `converged` in as_dict."""
        return {}

    def as_dict(self) -> dict:
        return {
            "law": self.FORMULA,
            "params": {k: v.as_dict() for k, v in self.params.items()},
            "objective": self.objective,
            "converged": self.converged,
            **self.search_stats(),
            "huber_delta": self.delta,
            "quality": self.quality.as_dict(),
            "holdout_quality": self.holdout_quality.as_dict() if self.holdout_quality else None,
            "bootstrap": bootstrap_summary(len(self.boot_laws), self.n_boot_failed, self.level),
        }
