"""Input checks shared by every fit: bad data fails early with a message naming the culprit.

A scaling-law fit on a NaN, a zero or a grid where every run has the same tokens-per-parameter
ratio does not crash; it silently returns nonsense. These checks turn such input into a
`ScalingDataError` that says which column, which run and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ScalingDataError(ValueError):
    """The data cannot support the requested fit; the message names the column and the run."""


def _label(i: int, labels: Sequence[str] | None) -> str:
    return f"run {labels[i]!r}" if labels is not None else f"index {i}"


def positive_array(
    name: str, values, labels: Sequence[str] | None = None, min_len: int = 1
) -> np.ndarray:
    """`values` as a 1-D float array of finite, positive numbers (logs of them are taken)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise ScalingDataError(f"{name}: not numeric ({e})") from None
    if arr.ndim != 1:
        raise ScalingDataError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    if labels is not None and len(labels) != len(arr):
        raise ScalingDataError(f"{name}: {len(arr)} values but {len(labels)} run names")
    if len(arr) < min_len:
        raise ScalingDataError(f"{name}: need at least {min_len} points, got {len(arr)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ScalingDataError(
            f"{name} of {_label(i, labels)} is {arr[i]}; values must be finite "
            f"({bad.size} such value(s))"
        )
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        i = int(bad[0])
        raise ScalingDataError(
            f"{name} of {_label(i, labels)} is {arr[i]:g}; values must be positive "
            f"({bad.size} such value(s))"
        )
    return arr


def same_length(**arrays: np.ndarray) -> int:
    """The common length of the named arrays, or an error listing each length."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ScalingDataError(f"columns differ in length: {detail}")
    return next(iter(lengths.values()))


def train_mask(holdout: np.ndarray | None, n: int, what: str = "runs") -> np.ndarray:
    """Which of the `n` points a fit uses: all but the `holdout` (a boolean mask over them)."""
    train = np.ones(n, bool) if holdout is None else ~np.asarray(holdout, bool)
    if len(train) != n:
        raise ScalingDataError(f"holdout mask has {len(train)} entries for {n} {what}")
    return train


def huber_delta(delta: float) -> float:
    """The Huber threshold of a robust fit: a positive number."""
    if delta <= 0:
        raise ScalingDataError(f"huber delta must be positive, got {delta}")
    return delta


def enough_points(what: str, n: int, n_params: int) -> None:
    """A fit with p free parameters needs more than p points to say anything."""
    if n <= n_params:
        raise ScalingDataError(
            f"{what}: {n} point(s) cannot constrain {n_params} parameters; need at least "
            f"{n_params + 1}"
        )


def distinct_values(name: str, arr: np.ndarray, at_least: int, what: str) -> None:
    """A power law in `name` needs the grid to vary `name` (relative spread above 1e-9)."""
    distinct = np.unique(np.round(np.log(arr), 9)).size
    if distinct < at_least:
        raise ScalingDataError(
            f"degenerate grid for {what}: {name} takes {distinct} distinct value(s), "
            f"need at least {at_least}"
        )


def not_collinear(log_n: np.ndarray, log_d: np.ndarray) -> None:
    """L(N, D) cannot separate the N and D terms when log D is an affine function of log N."""
    design = np.column_stack([np.ones_like(log_n), log_n, log_d])
    sv = np.linalg.svd(design - np.r_[0.0, design[:, 1:].mean(0)], compute_uv=False)
    if sv[-1] <= 1e-8 * sv[0]:
        raise ScalingDataError(
            "degenerate grid for L(N, D): log D is a linear function of log N (for example "
            "every run has the same tokens-per-parameter ratio), so the N and D terms cannot "
            "be told apart; vary the token budget at fixed model size"
        )
