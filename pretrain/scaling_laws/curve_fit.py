"""Fit a loss-curve law (curve_laws.py) to the training curves of runs under different schedules.

The fit minimises the Huber loss (huber_fit.huber) of relative residuals L_hat/L - 1, the
first-order equal of the log residuals the other fits use, but defined where a bad trial
parameter makes L_hat negative (a law with a subtracted annealing term can). Every run weighs the
same whatever its number of evaluations (each point of run j weighs count_j / n_j), so a densely
logged run does not outvote the others, and a bootstrap resample of runs is a vector of counts.

Starts: each law is linear in three parameters given the others, so for each row of a grid over
the non-linear ones, non-negative least squares gives the linear ones; the `top_k` best seed
L-BFGS-B (analytic gradient). Bootstrap refits start from the full-data optimum. The result is a
`huber_fit.LawFit`, so parameters, intervals and as_dict are the same as approach 3's.
LRs are divided by `lr_ref` (the largest LR of the fitted runs) so areas count steps; the fit
keeps it, and predictions take LRs in the runs' own units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize, nnls

from pretrain.scaling_laws.bootstrap import replicates, single_threaded_blas
from pretrain.scaling_laws.curve_laws import LAWS, CurveData, LRAnnealingLaw, MultiPowerLaw
from pretrain.scaling_laws.huber_fit import HuberFit, LawFit, Minimum, huber
from pretrain.scaling_laws.quality import Estimate, FitQuality, percentile_interval
from pretrain.scaling_laws.schedule_curves import Schedule, ScheduledCurve
from pretrain.scaling_laws.validate import ScalingDataError, huber_delta

_FLOOR = 1e-9  # predictions are clamped here before logs are taken for quality figures
# momenta tried when the LR-annealing law's lam is fitted: a drop's effect builds up over about
# 1/(1 - lam) steps (10 to 1000), which should be a small part of the runs
LAM_GRID = [0.9, 0.95, 0.98, 0.99, 0.995, 0.999]


@dataclass
class CurveProblem:
    """Per-run features and losses of one law, and per-run weights (bootstrap counts)."""

    law: Any  # LRAnnealingLaw or MultiPowerLaw (the class)
    feats: list  # one law.features(...) per run
    y: list[np.ndarray]
    w: np.ndarray  # per run
    delta: float

    def point_weights(self) -> np.ndarray:
        return np.concatenate([np.full(len(y), w / len(y)) for y, w in zip(self.y, self.w)])

    def with_weights(self, w: np.ndarray) -> CurveProblem:
        keep = np.flatnonzero(w > 0)
        return CurveProblem(self.law, [self.feats[i] for i in keep], [self.y[i] for i in keep],
                            w[keep].astype(float), self.delta)  # fmt: skip

    def predict_jac(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.law.predict_jac(theta, f) for f in self.feats]
        return np.concatenate([p for p, _ in parts]), np.vstack([j for _, j in parts])


def objective(theta: np.ndarray, prob: CurveProblem) -> tuple[float, np.ndarray]:
    """Weighted mean Huber loss of relative residuals over delta, and its gradient."""
    y = np.concatenate(prob.y)
    w = prob.point_weights()
    pred, J = prob.predict_jac(theta)
    if not np.all(np.isfinite(pred)) or not np.all(np.isfinite(J)):
        return 1e6, np.zeros_like(theta)
    r = pred / y - 1.0
    wsum = w.sum()
    f = float(w @ huber(r, prob.delta)) / (prob.delta * wsum)
    g = J.T @ (w * np.clip(r, -prob.delta, prob.delta) / y) / (prob.delta * wsum)
    return f, g


def grid_starts(prob: CurveProblem, top_k: int) -> np.ndarray:
    """The `top_k` best starts: NNLS linear parameters for each non-linear grid row."""
    y = np.concatenate(prob.y)
    scale = np.sqrt(prob.point_weights()) / y
    scored = []
    for row in prob.law.nonlinear_grid():
        B = np.vstack([prob.law.basis(row, f) for f in prob.feats])
        if not np.all(np.isfinite(B)):
            continue
        coef, _ = nnls(B * scale[:, None], y * scale)
        theta = prob.law.theta_of(row, coef)
        scored.append((objective(theta, prob)[0], theta))
    if not scored:
        raise ScalingDataError("no start of the curve-law grid gives finite predictions")
    scored.sort(key=lambda t: t[0])
    return np.array([t for _, t in scored[:top_k]])


def minimize_from(starts: np.ndarray, prob: CurveProblem, maxiter: int = 500) -> Minimum:
    """L-BFGS-B from each start; the lowest objective wins (others kept as alternatives)."""
    found = []
    for x0 in starts:
        res = minimize(objective, x0, args=(prob,), jac=True, method="L-BFGS-B",
                       bounds=prob.law.bounds(),
                       options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-10})  # fmt: skip
        if np.all(np.isfinite(res.x)) and np.isfinite(res.fun):
            found.append((float(res.fun), res.x.copy(), bool(res.success)))
    if not found:
        raise RuntimeError("every L-BFGS start diverged")
    found.sort(key=lambda t: t[0])
    return Minimum(found[0][1], found[0][0], found[0][2], len(starts), [x for _, x, _ in found[1:]])


@dataclass
class _Refit:
    """One bootstrap refit (module level: picklable for worker processes)."""

    prob: CurveProblem
    start: np.ndarray

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        if np.count_nonzero(counts) < 2:
            raise ValueError("resample drew a single run")  # one schedule cannot separate terms
        return minimize_from(self.start[None, :], self.prob.with_weights(counts)).theta


@dataclass
class CurveLawFit(LawFit):
    """A curve law fit on runs, with per-run final-loss predictions (fitted and held out)."""

    FORMULA: ClassVar[str] = ""
    PARAM_NAMES: ClassVar[list[str]] = []
    lr_ref: float = 1.0
    runs: list[dict] = field(default_factory=list)  # name, schedule, held_out, final losses

    def predict(self, lrs: np.ndarray, steps: np.ndarray, law=None) -> np.ndarray:
        """Loss at `steps` of a run with LR sequence `lrs` (the runs' units)."""
        law = law or self.law
        return law.loss(CurveData(np.asarray(steps, np.int64), np.asarray(lrs) / self.lr_ref))

    def predict_final(self, schedule: Schedule) -> Estimate:
        """Final loss of a run under `schedule`, with the bootstrap interval."""
        lrs, end = schedule.lrs(), np.array([schedule.cfg.steps])
        return self.interval(lambda law: float(self.predict(lrs, end, law)[0]))

    def band(self, lrs: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise interval of the predicted curve over the bootstrap laws."""
        if not self.boot_laws:
            return None
        reps = np.array([self.predict(lrs, steps, b) for b in self.boot_laws])
        return percentile_interval(reps, self.level)

    def as_dict(self) -> dict:
        return {**super().as_dict(), "lam": getattr(self.law, "lam", None),
                "lr_ref": self.lr_ref, "runs": self.runs}  # fmt: skip


@dataclass
class LRAnnealingFit(CurveLawFit):
    FORMULA: ClassVar[str] = LRAnnealingLaw.FORMULA
    PARAM_NAMES: ClassVar[list[str]] = LRAnnealingLaw.PARAM_NAMES


@dataclass
class MultiPowerFit(CurveLawFit):
    FORMULA: ClassVar[str] = MultiPowerLaw.FORMULA
    PARAM_NAMES: ClassVar[list[str]] = MultiPowerLaw.PARAM_NAMES


FITS = {LRAnnealingLaw.NAME: LRAnnealingFit, MultiPowerLaw.NAME: MultiPowerFit}


def _quality(prob: CurveProblem, theta: np.ndarray) -> FitQuality | None:
    if not prob.feats:
        return None
    pred = prob.predict_jac(theta)[0]
    return FitQuality.of(np.log(np.maximum(pred, _FLOOR)), np.log(np.concatenate(prob.y)))


@single_threaded_blas
def fit_over_lams(
    law: Any,
    features_of: Callable[[float], list],
    ys: list[np.ndarray],
    holdout: np.ndarray,
    lams: list[float],
    delta: float,
    top_k: int,
    n_boot: int,
    seed: int,
    n_jobs: int,
) -> tuple[HuberFit, float, list]:
    """Fit `law` to the runs not in `holdout` once per annealing momentum in `lams` and keep the
    lowest objective (the held-out runs never choose it); bootstrap at that momentum, score both
    sets. Returns (fit, its momentum, every run's features at it). One path for the per-schedule
    and the across-sizes curve laws."""
    def problem(feats: list, mask: np.ndarray) -> CurveProblem:
        idx = np.flatnonzero(mask)
        return CurveProblem(law, [feats[i] for i in idx], [ys[i] for i in idx],
                            np.ones(len(idx)), delta)  # fmt: skip

    tried = []
    for m in lams:
        feats = features_of(m)
        prob = problem(feats, ~holdout)
        tried.append((minimize_from(grid_starts(prob, top_k), prob), m, feats, prob))
    best, lam, feats, prob = min(tried, key=lambda t: t[0].objective)
    boot, failed = np.empty((0, len(best.theta))), 0
    if n_boot > 0:
        boot, failed = replicates(_Refit(prob, best.theta), len(prob.y), n_boot, seed, n_jobs)
    hfit = HuberFit(best, _quality(prob, best.theta),
                    _quality(problem(feats, holdout), best.theta), boot, failed)  # fmt: skip
    return hfit, lam, feats


def fit_curve_law(
    curves: list[ScheduledCurve],
    law: str = LRAnnealingLaw.NAME,
    *,
    lam: float | None = 0.999,
    delta: float = 1e-3,
    holdout: np.ndarray | None = None,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
    top_k: int = 3,
) -> CurveLawFit:
    """Fit `law` to the curves not in `holdout` (boolean mask over curves); score the rest.

    lam: the LR-annealing law's momentum; None picks it from LAM_GRID by the fit objective on
    the fitted runs (never the held-out ones), then keeps it fixed in the bootstrap.
    """
    if law not in LAWS:
        raise ScalingDataError(f"curve law {law!r} is not one of {', '.join(LAWS)}")
    if lam is not None and not 0.0 <= lam < 1.0:
        raise ScalingDataError(f"annealing momentum lam must be in [0, 1), got {lam}")
    huber_delta(delta)
    cls = LAWS[law]
    holdout = np.zeros(len(curves), bool) if holdout is None else np.asarray(holdout, bool)
    train = ~holdout
    n_points = sum(len(c.steps) for c, t in zip(curves, train) if t)
    if train.sum() < 2 or n_points < len(cls.PARAM_NAMES) + 2:
        raise ScalingDataError(f"the {law} law needs at least 2 fitted runs and "
                               f"{len(cls.PARAM_NAMES) + 2} evaluations, got {int(train.sum())} "
                               f"runs and {n_points}")  # fmt: skip
    lr_ref = max(float(c.schedule.lrs().max()) for c, t in zip(curves, train) if t)
    lams = [lam] if lam is not None or cls is not LRAnnealingLaw else LAM_GRID
    hfit, lam, feats = fit_over_lams(
        cls,
        lambda m: [cls.features(CurveData(c.steps, c.schedule.lrs() / lr_ref), m) for c in curves],
        [c.loss for c in curves], holdout, lams, delta, top_k, n_boot, seed, n_jobs,
    )  # fmt: skip
    best = hfit.best
    fit = FITS[law].of(hfit, lambda t, m=lam: cls.from_theta(t, m), delta, level, lr_ref=lr_ref)
    for c, f, held in zip(curves, feats, holdout):
        pred = float(cls.predict_jac(best.theta, f)[0][-1])
        final = fit.predict_final(c.schedule) if c.steps[-1] == c.schedule.cfg.steps else None
        fit.runs.append({
            "name": c.name, "schedule": c.schedule.label(), "held_out": bool(held),
            "last_step": int(c.steps[-1]), "observed": float(c.loss[-1]), "predicted": pred,
            "rel_error": pred / float(c.loss[-1]) - 1.0,
            "predicted_interval": final.as_dict() if final else None,
        })  # fmt: skip
    return fit
