"""Goodness of fit and parameter estimates with intervals, shared by all fits.

Errors are reported on log-loss (the scale the fits minimise on): an RMSE of 0.01 means the law
misses a typical run by about 1 %. R^2 is on the loss itself, for readers used to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pretrain.scaling_laws.bootstrap import percentile_interval


@dataclass
class FitQuality:
    """How well predictions match observations (on the fitted points or on a holdout)."""

    n: int
    rmse_log: float  # root mean square of log(L_hat) - log(L)
    mae_log: float
    median_abs_log: float  # robust to the outliers a Huber fit ignores
    max_abs_log: float
    r2: float  # 1 - SS_res/SS_tot on L itself; NaN for fewer than 2 points

    @classmethod
    def of(cls, pred_log: np.ndarray, y_log: np.ndarray) -> FitQuality:
        r = np.asarray(pred_log) - np.asarray(y_log)
        loss, pred = np.exp(y_log), np.exp(pred_log)
        ss_tot = float(((loss - loss.mean()) ** 2).sum())
        r2 = 1 - float(((pred - loss) ** 2).sum()) / ss_tot if len(r) > 1 and ss_tot > 0 else np.nan
        return cls(
            n=len(r),
            rmse_log=float(np.sqrt(np.mean(r**2))),
            mae_log=float(np.mean(np.abs(r))),
            median_abs_log=float(np.median(np.abs(r))),
            max_abs_log=float(np.max(np.abs(r))),
            r2=float(r2),
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Estimate:
    """A point estimate with its bootstrap percentile interval (NaN bounds without bootstrap)."""

    value: float
    lo: float = float("nan")
    hi: float = float("nan")

    def covers(self, x: float) -> bool:
        return bool(self.lo <= x <= self.hi)

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        if np.isnan(self.lo):
            return f"{self.value:.4g}"
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def estimates(
    names: list[str], values: np.ndarray, boot: np.ndarray | None, level: float
) -> dict[str, Estimate]:
    """Name each value and attach the percentile interval of its bootstrap column."""
    if boot is None or len(boot) == 0:
        return {n: Estimate(float(v)) for n, v in zip(names, values)}
    lo, hi = percentile_interval(boot, level)
    return {n: Estimate(float(v), float(a), float(b)) for n, v, a, b in zip(names, values, lo, hi)}


def with_interval(value: float, reps, level: float) -> Estimate:
    """`value` with the percentile interval of its bootstrap replicates `reps` (one per
    resample; failed, non-finite ones ignored); no interval without replicates."""
    reps = np.asarray(reps, float)
    if not len(reps):
        return Estimate(float(value))
    lo, hi = percentile_interval(reps[:, None], level)
    return Estimate(float(value), float(lo[0]), float(hi[0]))


def bootstrap_summary(n: int, failed: int, level: float) -> dict:
    """The `bootstrap` entry of a fit's as_dict: resamples kept, failed, and interval level."""
    return {"n": n, "failed": failed, "level": level}
