"""Approach 1: the envelope of training curves, and the Pareto frontier of final losses.

Every run's loss-vs-FLOPs curve is interpolated (linearly in log FLOPs) onto a common grid of
compute values; at each grid point the run with the lowest loss defines the frontier there,
and its N and tokens-so-far become (N_opt, D_opt) at that compute. Power laws through those
points give N_opt(C) and D_opt(C). The first `min_progress` of each curve is dropped: during
warmup and early cosine decay a run is far from what a run planned for that compute reaches.
Points where the smallest or the largest model is on the frontier are dropped from the power-law
fit (`drop_edges`): there the optimum may lie outside the sampled sizes, which flattens the slope.
Bootstrap resamples runs (a run drawn twice counts once in an envelope).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pretrain.scaling_laws import validate
from pretrain.scaling_laws.bootstrap import replicates, single_threaded_blas
from pretrain.scaling_laws.powerlaw import (
    AllocationLaws,
    PowerLaw,
    allocation_values,
    fit_power_law,
)
from pretrain.scaling_laws.quality import bootstrap_summary


@dataclass
class Curve:
    """One run's training curve: cumulative FLOPs, cumulative tokens and loss per evaluation."""

    name: str
    N: float
    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray

    def __post_init__(self) -> None:
        self.flops = validate.positive_array(f"flops of run {self.name!r}", self.flops, min_len=2)
        self.tokens = validate.positive_array(f"tokens of run {self.name!r}", self.tokens)
        self.loss = validate.positive_array(f"loss of run {self.name!r}", self.loss)
        validate.same_length(flops=self.flops, tokens=self.tokens, loss=self.loss)
        if np.any(np.diff(self.flops) <= 0):
            raise validate.ScalingDataError(
                f"flops of run {self.name!r} are not strictly increasing"
            )


@dataclass
class Envelope:
    """Frontier points: compute, lowest loss there, and the (N, D, run) that reached it."""

    C: np.ndarray
    L: np.ndarray
    N: np.ndarray
    D: np.ndarray
    run: np.ndarray  # index into the curves


def envelope(curves: list[Curve], n_grid: int = 200, min_progress: float = 0.1) -> Envelope:
    """Lower envelope of the curves on `n_grid` log-spaced compute values."""
    if not curves:
        raise validate.ScalingDataError("envelope: no training curves given")
    starts = [c.flops[-1] * min_progress if min_progress > 0 else c.flops[0] for c in curves]
    starts = [max(s, c.flops[0]) for s, c in zip(starts, curves)]
    grid = np.geomspace(min(starts), max(c.flops[-1] for c in curves), n_grid)
    best = np.full(n_grid, np.inf)
    N, D, run = np.zeros(n_grid), np.zeros(n_grid), np.full(n_grid, -1)
    lg = np.log(grid)
    for i, (c, s) in enumerate(zip(curves, starts)):
        inside = (grid >= s) & (grid <= c.flops[-1])
        if not inside.any():
            continue
        lf = np.log(c.flops)
        loss = np.interp(lg[inside], lf, c.loss)
        better = loss < best[inside]
        idx = np.flatnonzero(inside)[better]
        best[idx] = loss[better]
        N[idx] = c.N
        D[idx] = np.exp(np.interp(lg[idx], lf, np.log(c.tokens)))
        run[idx] = i
    ok = run >= 0
    return Envelope(grid[ok], best[ok], N[ok], D[ok], run[ok])


def pareto_frontier(C: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Indices of runs with a lower loss than every run of smaller compute, by compute."""
    order = np.argsort(C, kind="stable")
    keep, best = [], np.inf
    for i in order:
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return np.array(keep, dtype=int)


def interior(env: Envelope, curves: list[Curve]) -> np.ndarray:
    """Mask of envelope points whose frontier model is neither the smallest nor the largest."""
    sizes = np.array([c.N for c in curves])
    return (env.N > sizes.min()) & (env.N < sizes.max())


def _laws(env: Envelope, mask: np.ndarray) -> tuple[PowerLaw, PowerLaw]:
    validate.distinct_values(
        "params N", env.N[mask], 2, "approach-1 envelope (frontier models, edges excluded)"
    )
    C, N, D = env.C[mask], env.N[mask], env.D[mask]
    return fit_power_law(C, N, "N_opt(C)"), fit_power_law(C, D, "D_opt(C)")


@dataclass
class EnvelopeFit(AllocationLaws):
    env: Envelope
    used: np.ndarray  # mask of envelope points that entered the power-law fits
    n_law: PowerLaw
    d_law: PowerLaw
    level: float
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    n_boot_failed: int = 0

    def as_dict(self) -> dict:
        return {
            "law": "N_opt = k_N * C^a, D_opt = k_D * C^b (envelope of training curves)",
            "params": {k: v.as_dict() for k, v in self.params.items()},
            "n_envelope_points": len(self.env.C),
            "n_points_fitted": int(self.used.sum()),
            "frontier_runs": sorted({int(r) for r in self.env.run}),
            "bootstrap": bootstrap_summary(len(self.boot), self.n_boot_failed, self.level),
        }


@dataclass
class _Refit:
    """Envelope and power laws of one resample of runs (module level: picklable)."""

    curves: list[Curve]
    n_grid: int
    min_progress: float
    drop_edges: bool

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        sub = [c for c, k in zip(self.curves, counts) if k > 0]
        e = envelope(sub, self.n_grid, self.min_progress)
        nl, dl = _laws(e, interior(e, sub) if self.drop_edges else np.ones(len(e.C), bool))
        return allocation_values(nl, dl)


@single_threaded_blas
def fit_envelope(
    curves: list[Curve],
    *,
    n_grid: int = 200,
    min_progress: float = 0.1,
    drop_edges: bool = True,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
) -> EnvelopeFit:
    """Approach 1 with a bootstrap over runs."""
    env = envelope(curves, n_grid, min_progress)
    used = interior(env, curves) if drop_edges else np.ones(len(env.C), bool)
    n_law, d_law = _laws(env, used)
    fit = EnvelopeFit(env, used, n_law, d_law, level)
    if n_boot > 0:
        refit = _Refit(curves, n_grid, min_progress, drop_edges)
        fit.boot, fit.n_boot_failed = replicates(refit, len(curves), n_boot, seed, n_jobs)
    return fit
