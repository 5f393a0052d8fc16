"""Synthetic studies drawn from a known law, for tests, benchmarks and demos.

Runs lie on an IsoFLOP grid (C = 6 N D): per budget, model sizes log-spaced around the true
compute-optimal size. Loss is the true L(N, D) times log-normal noise; optionally a few runs
are corrupted upward (diverged or mislogged runs), which a robust fit must shrug off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.scaling_laws.envelope import Curve
from pretrain.scaling_laws.parametric import ParametricLaw

# Hoffmann et al. (2022) approach-3 estimates: a realistic truth for recovery tests.
CHINCHILLA = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@dataclass
class SyntheticRuns:
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    budget: np.ndarray  # planned budget of each run
    outlier: np.ndarray  # boolean: corrupted runs


def isoflop_runs(
    law: ParametricLaw = CHINCHILLA,
    budgets=(1e18, 3e18, 1e19, 3e19, 1e20),
    points: int = 9,
    spread: float = 30.0,
    noise: float = 0.01,
    n_outliers: int = 0,
    outlier_scale: float = 0.3,
    seed: int = 0,
) -> SyntheticRuns:
    """`points` sizes per budget spanning `spread`x around N_opt; noise is the sd of log-loss."""
    rng = np.random.default_rng(seed)
    budgets = np.asarray(budgets, float)
    n_opt, _ = law.compute_optimal(budgets)
    factors = np.geomspace(1 / np.sqrt(spread), np.sqrt(spread), points)
    N = (n_opt[:, None] * factors[None, :]).ravel()
    C = np.repeat(budgets, points)
    D = C / (6 * N)
    L = law.loss(N, D) * np.exp(rng.normal(0.0, noise, len(N)))
    outlier = np.zeros(len(N), bool)
    if n_outliers:
        idx = rng.choice(len(N), n_outliers, replace=False)
        L[idx] *= np.exp(outlier_scale * rng.uniform(0.5, 1.5, n_outliers))
        outlier[idx] = True
    return SyntheticRuns(N, D, C, L, C.copy(), outlier)


def training_curves(
    law: ParametricLaw = CHINCHILLA,
    sizes=(1e7, 3e7, 1e8, 3e8, 1e9),
    max_compute: float = 1e20,
    n_evals: int = 40,
    noise: float = 0.005,
    eval_noise: float = 0.001,
    seed: int = 0,
) -> list[Curve]:
    """One curve per model size, each trained to `max_compute` (C = 6 N D along the way).

    Real curves are smooth within a run and offset between runs (seed, data order), so the noise
    is one log-normal offset per run (`noise`) plus a little per evaluation (`eval_noise`).
    """
    rng = np.random.default_rng(seed)
    curves = []
    for i, n in enumerate(sizes):
        flops = np.geomspace(max_compute / 1e4, max_compute, n_evals)
        tokens = flops / (6 * n)
        offset = rng.normal(0, noise)
        loss = law.loss(n, tokens) * np.exp(offset + rng.normal(0, eval_noise, n_evals))
        curves.append(Curve(f"n{i}", float(n), flops, tokens, loss))
    return curves


def as_rows(runs: SyntheticRuns) -> list[dict]:
    """runs.csv rows (see table.py) for synthetic runs."""
    return [
        {"name": f"syn{i:03d}", "params": n, "tokens": d, "flops": c, "loss": loss}
        for i, (n, d, c, loss) in enumerate(zip(runs.N, runs.D, runs.C, runs.L))
    ]


def curve_rows(curves: list[Curve]) -> list[dict]:
    """curves.csv rows for synthetic curves."""
    return [
        {"name": c.name, "params": c.N, "flops": f, "tokens": t, "loss": loss}
        for c in curves
        for f, t, loss in zip(c.flops, c.tokens, c.loss)
    ]


def scheduled_curves(
    law,
    schedules: list,
    evals: int = 40,
    noise: float = 0.0,
    seed: int = 0,
    params: float = 1e6,
) -> list:
    """One curve per `Schedule`, drawn from a curve law (curve_laws.py) with LRs in units of
    the largest LR among `schedules`; `evals` evenly spaced evaluations ending at the last step,
    each with log-normal noise of sd `noise`."""
    from pretrain.scaling_laws.curve_laws import CurveData
    from pretrain.scaling_laws.schedule_curves import ScheduledCurve

    rng = np.random.default_rng(seed)
    lr_ref = max(s.lrs().max() for s in schedules)
    out = []
    for i, s in enumerate(schedules):
        steps = np.unique(np.linspace(s.cfg.steps / evals, s.cfg.steps, evals).round()).astype(int)
        loss = law.loss(CurveData(steps, s.lrs() / lr_ref))
        loss = loss * np.exp(rng.normal(0.0, noise, len(steps)))
        out.append(ScheduledCurve(f"{s.cfg.name}{i}", params, steps, loss, s))
    return out


def scheduled_rows(curves: list) -> tuple[list[dict], list[dict]]:
    """runs.csv rows (with the schedule columns `collect` writes) and curves.csv rows (with
    step) for `ScheduledCurve`s, as if `collect` had read them from run directories."""
    runs, points = [], []
    for c in curves:
        s = c.schedule.cfg
        runs.append({
            "name": c.name, "params": c.params, "tokens": int(c.steps[-1]),
            "flops": 6.0 * c.params * c.steps[-1], "loss": float(c.loss[-1]),
            "lr": c.schedule.lr, "schedule": s.name, "schedule_steps": s.steps,
            "warmup_steps": s.warmup_steps, "min_lr_ratio": s.min_lr_ratio,
            "decay_fraction": s.decay_fraction,
        })  # fmt: skip
        points += [{"name": c.name, "params": c.params, "flops": 6.0 * c.params * step,
                    "tokens": int(step), "loss": float(loss), "step": int(step)}
                   for step, loss in zip(c.steps, c.loss)]  # fmt: skip
    return runs, points
