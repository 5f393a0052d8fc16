"""Straight-line fits in log-log space: N_opt = k * C^a and friends (approaches 1 and 2).

Approaches 1 and 2 differ in how they find compute-optimal points (training-curve envelope,
IsoFLOP parabola minima) and agree on what follows: two power laws and their bootstrap
replicates, read out by `AllocationLaws`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.scaling_laws import validate
from pretrain.scaling_laws.bootstrap import percentile_interval
from pretrain.scaling_laws.quality import Estimate, estimates, with_interval

ALLOCATION_PARAMS = ["a", "k_N", "b", "k_D"]  # N_opt = k_N C^a, D_opt = k_D C^b


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x^exponent."""

    exponent: float
    coef: float

    def __call__(self, x) -> np.ndarray:
        return self.coef * np.asarray(x, float) ** self.exponent

    def values(self) -> np.ndarray:
        return np.array([self.exponent, self.coef])


def fit_power_law(x: np.ndarray, y: np.ndarray, what: str) -> PowerLaw:
    """Least squares on (log x, log y); needs two distinct x."""
    x = validate.positive_array(f"{what}: x", x)
    y = validate.positive_array(f"{what}: y", y)
    validate.same_length(x=x, y=y)
    validate.distinct_values("compute C", x, 2, what)
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(slope), float(np.exp(intercept)))


def allocation_values(n_law: PowerLaw, d_law: PowerLaw) -> np.ndarray:
    """The parameter vector of N_opt(C) and D_opt(C), in ALLOCATION_PARAMS order."""
    return np.r_[n_law.values(), d_law.values()]


class AllocationLaws:
    """Estimates from N_opt(C) and D_opt(C) with bootstrap replicates `boot` (rows in
    ALLOCATION_PARAMS order), shared by the approach 1 and 2 fits (dataclasses with these
    attributes)."""

    n_law: PowerLaw
    d_law: PowerLaw
    level: float
    boot: np.ndarray

    @property
    def params(self) -> dict[str, Estimate]:
        values = allocation_values(self.n_law, self.d_law)
        boot = self.boot if len(self.boot) else None
        return estimates(ALLOCATION_PARAMS, values, boot, self.level)

    def compute_optimal(self, C: float) -> dict[str, Estimate]:
        b = self.boot
        n_reps, d_reps = b[:, 1] * C ** b[:, 0], b[:, 3] * C ** b[:, 2]
        n, d = float(self.n_law(C)), float(self.d_law(C))
        return {
            "N_opt": with_interval(n, n_reps, self.level),
            "D_opt": with_interval(d, d_reps, self.level),
            "tokens_per_param": with_interval(d / n, d_reps / n_reps, self.level),
        }

    def band(self, C: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise interval of N_opt(C) ("N") or D_opt(C) ("D") over bootstrap laws."""
        e, k = (0, 1) if which == "N" else (2, 3)
        reps = self.boot[:, k, None] * np.asarray(C)[None, :] ** self.boot[:, e, None]
        return percentile_interval(reps, self.level)
