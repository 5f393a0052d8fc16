"""Straight-line fits in log-log space: N_opt = k * C^a and friends (approaches 1 and 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pretrain.scaling_laws import validate


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
