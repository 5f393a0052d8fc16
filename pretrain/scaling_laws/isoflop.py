"""Approach 2: IsoFLOP profiles. Per compute budget, a parabola of loss in log N; its minimum
gives (N_opt, D_opt) at that budget; power laws N_opt = k_N C^a and D_opt = k_D C^b follow.

Runs are grouped into budgets by their compute (runs planned for one budget land within a few
percent of it after rounding steps) unless budget labels are given. A profile whose parabola
opens downwards or whose minimum lies outside the sampled model sizes is reported but left out
of the power-law fit: an extrapolated minimum says little. D_opt uses the budget's own
tokens-vs-parameters relation (a line in log space), so no C = 6ND assumption is needed here.
Bootstrap resamples runs within each budget, keeping every budget in every resample.
The parabola is fit robustly: a least-median-of-squares start (the best parabola through three
of the runs) then Huber-weighted least squares (threshold 1.345 robust sigmas), so one diverged
run, even at the edge of the grid where it has most leverage, cannot tip a profile over as it
does with plain least squares (`robust=False`, Hoffmann et al.'s choice). With fewer than 6 runs
in a budget there is no redundancy to tell an outlier from curvature, so those profiles are fit
by plain least squares.
"""

from __future__ import annotations

import itertools
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
from pretrain.scaling_laws.quality import FitQuality, bootstrap_summary


def group_budgets(C: np.ndarray, rtol: float = 0.25) -> np.ndarray:
    """Integer budget labels: sorted computes split wherever consecutive ones differ by > rtol."""
    order = np.argsort(C)
    gaps = np.diff(np.log(C[order])) > np.log1p(rtol)
    labels = np.empty(len(C), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(gaps)])
    return labels


@dataclass
class IsoFLOPProfile:
    """One budget's parabola L = c2 x^2 + c1 x + c0 in x = log N, and its minimum."""

    budget: float  # geometric mean of the budget's run computes
    n_points: int
    coef: tuple[float, float, float]
    N_opt: float
    D_opt: float
    L_opt: float
    n_range: tuple[float, float]
    usable: bool  # opens upwards with its minimum inside the sampled sizes
    note: str = ""

    def loss(self, N) -> np.ndarray:
        return np.polyval(self.coef, np.log(np.asarray(N, float)))

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _lmeds_parabola(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Parabola through the three points whose fit has the least median absolute residual."""
    n = len(x)
    idx = np.array(list(itertools.combinations(range(n), 3)))
    if len(idx) > 600:  # many runs per budget: a deterministic subsample of the triples
        idx = idx[np.random.default_rng(0).choice(len(idx), 600, replace=False)]
    V = np.stack([x[idx] ** 2, x[idx], np.ones_like(x[idx])], axis=-1)  # (K, 3, 3)
    ok = np.abs(np.linalg.det(V)) > 1e-12
    coefs = np.linalg.solve(V[ok], y[idx[ok]][..., None])[..., 0]  # (K, 3)
    resid = np.abs(coefs @ np.stack([x**2, x, np.ones_like(x)]) - y)
    return coefs[np.argmin(np.median(resid, axis=1))]


def robust_polyfit(x: np.ndarray, y: np.ndarray, w: np.ndarray, iters: int = 30) -> np.ndarray:
    """Parabola with Huber weights by iteratively reweighted least squares from an LMedS start."""
    coef = _lmeds_parabola(x, y) if len(x) > 3 else np.polyfit(x, y, 2, w=np.sqrt(w))
    for _ in range(iters):
        r = y - np.polyval(coef, x)
        scale = max(1.4826 * np.median(np.abs(r)), 1e-6 * np.abs(y).mean())
        hub = np.minimum(1.0, 1.345 * scale / np.maximum(np.abs(r), 1e-300))
        new = np.polyfit(x, y, 2, w=np.sqrt(w * hub))
        if np.allclose(new, coef, rtol=1e-10, atol=1e-12):
            break
        coef = new
    return coef


def fit_profile(
    N: np.ndarray,
    D: np.ndarray,
    C: np.ndarray,
    L: np.ndarray,
    w: np.ndarray | None = None,
    robust: bool = True,
) -> IsoFLOPProfile:
    """Weighted parabola fit of one budget (weights are bootstrap counts)."""
    w = np.ones(len(N)) if w is None else w
    keep = w > 0
    N, D, C, L, w = N[keep], D[keep], C[keep], L[keep], w[keep]
    budget = float(np.exp(np.mean(np.log(C))))
    validate.distinct_values("params N", N, 3, f"IsoFLOP parabola at C={budget:.3g}")
    x = np.log(N)
    if robust and len(x) >= 6:
        coef = robust_polyfit(x, L, w)
    else:
        coef = np.polyfit(x, L, 2, w=np.sqrt(w))
    dline = np.polyfit(x, np.log(D), 1, w=np.sqrt(w))
    lo, hi = float(N.min()), float(N.max())
    if coef[0] <= 0:
        x_opt, usable, note = x[np.argmin(L)], False, "parabola opens downwards"
    else:
        x_opt = -coef[1] / (2 * coef[0])
        usable = bool(np.log(lo) <= x_opt <= np.log(hi))
        note = "" if usable else "minimum outside the sampled model sizes"
    return IsoFLOPProfile(
        budget,
        int(w.sum()),
        tuple(float(c) for c in coef),
        float(np.exp(x_opt)),
        float(np.exp(np.polyval(dline, x_opt))),
        float(np.polyval(coef, x_opt)),
        (lo, hi),
        usable,
        note,
    )


def _profiles(N, D, C, L, labels, w, robust: bool = True) -> list[IsoFLOPProfile]:
    out = []
    for g in np.unique(labels):
        m = labels == g
        out.append(fit_profile(N[m], D[m], C[m], L[m], w[m], robust))
    return out


def _laws(profiles: list[IsoFLOPProfile]) -> tuple[PowerLaw, PowerLaw]:
    good = [p for p in profiles if p.usable]
    if len(good) < 2:
        raise validate.ScalingDataError(
            f"IsoFLOP fit: {len(good)} usable budget(s) of {len(profiles)} (a usable parabola "
            "opens upwards with its minimum inside the sampled sizes); need at least 2. "
            "Widen the range of model sizes per budget or add budgets"
        )
    C = np.array([p.budget for p in good])
    n_law = fit_power_law(C, np.array([p.N_opt for p in good]), "N_opt(C)")
    d_law = fit_power_law(C, np.array([p.D_opt for p in good]), "D_opt(C)")
    return n_law, d_law


@dataclass
class IsoFLOPFit(AllocationLaws):
    profiles: list[IsoFLOPProfile]
    n_law: PowerLaw
    d_law: PowerLaw
    level: float
    holdout_quality: FitQuality | None = None  # log error of predicted N_opt at held-out budgets
    quality: FitQuality | None = None  # the N_opt(C) line through the usable minima (log N_opt)
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    n_boot_failed: int = 0

    def as_dict(self) -> dict:
        return {
            "law": "N_opt = k_N * C^a, D_opt = k_D * C^b (parabola minima per budget)",
            "params": {k: v.as_dict() for k, v in self.params.items()},
            "profiles": [p.as_dict() for p in self.profiles],
            "holdout_quality": self.holdout_quality.as_dict() if self.holdout_quality else None,
            "quality": self.quality.as_dict() if self.quality else None,
            "bootstrap": bootstrap_summary(len(self.boot), self.n_boot_failed, self.level),
        }


@dataclass
class _Refit:
    """Profiles and power laws on one resample (module level: picklable for workers)."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    labels: np.ndarray
    robust: bool

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        w = counts.astype(float)
        nl, dl = _laws(_profiles(self.N, self.D, self.C, self.L, self.labels, w, self.robust))
        return allocation_values(nl, dl)


@single_threaded_blas
def fit_isoflop(
    N,
    D,
    C,
    L,
    *,
    budgets: np.ndarray | None = None,
    names: list[str] | None = None,
    holdout: np.ndarray | None = None,
    rtol: float = 0.25,
    robust: bool = True,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
    n_jobs: int = 1,
) -> IsoFLOPFit:
    """Approach 2. `budgets` labels runs by planned budget (else grouped by C within rtol);
    `holdout` (boolean mask over runs) holds out whole budgets to score predicted N_opt."""
    N = validate.positive_array("params N", N, names)
    D = validate.positive_array("tokens D", D, names)
    C = validate.positive_array("compute C", C, names)
    L = validate.positive_array("loss", L, names)
    n = validate.same_length(N=N, D=D, C=C, loss=L)
    validate.enough_points("IsoFLOP fit", n, 5)
    labels = (
        group_budgets(C, rtol) if budgets is None else np.unique(budgets, return_inverse=True)[1]
    )
    train = validate.train_mask(holdout, n, "runs")
    t = train
    profiles = _profiles(N[t], D[t], C[t], L[t], labels[t], np.ones(int(t.sum())), robust)
    n_law, d_law = _laws(profiles)
    held = None
    if (~train).any():
        hp = [
            p
            for p in _profiles(
                N[~t], D[~t], C[~t], L[~t], labels[~t], np.ones(int((~t).sum())), robust
            )
            if p.usable
        ]
        if hp:
            obs = np.log([p.N_opt for p in hp])
            held = FitQuality.of(np.log(n_law([p.budget for p in hp])), obs)
    good = [p for p in profiles if p.usable]
    line = FitQuality.of(np.log(n_law([p.budget for p in good])), np.log([p.N_opt for p in good]))
    fit = IsoFLOPFit(profiles, n_law, d_law, level, held, line)
    if n_boot > 0:
        refit = _Refit(N[t], D[t], C[t], L[t], labels[t], robust)
        fit.boot, fit.n_boot_failed = replicates(
            refit, int(t.sum()), n_boot, seed, n_jobs, strata=labels[t]
        )
    return fit
