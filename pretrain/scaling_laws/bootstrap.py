"""Bootstrap over runs: resample runs with replacement, refit, read intervals off percentiles.

A resample is a vector of counts (how often each run was drawn), so fits take it as weights.
Counts are drawn up front from one seed, so results do not depend on the number of worker
processes. Workers are forked, except once torch is loaded (as in `pretrain scaling study`,
after training): forking a process whose OpenMP threads have run can deadlock the child, so
those workers come from a forkserver, which re-imports the main module (scripts need the
`if __name__ == "__main__":` guard then). The fit function is pickled either way, so it is a
module-level callable.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

FitFn = Callable[[np.ndarray], np.ndarray]
F = TypeVar("F", bound=Callable[..., Any])


def single_threaded_blas(fn: F) -> F:
    """Run `fn` with one BLAS thread. L-BFGS-B makes thousands of tiny BLAS calls; threaded
    OpenBLAS on a busy machine turns each into a spin-wait and made fits 7x slower."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def resample_counts(
    n: int, n_boot: int, seed: int = 0, strata: np.ndarray | None = None
) -> np.ndarray:
    """(n_boot, n) integer counts; with `strata`, each stratum is resampled within itself.

    Stratifying keeps an IsoFLOP grid's budgets populated in every resample.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    counts = np.zeros((n_boot, n), dtype=np.int64)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), n_boot)
    return counts


def _safe(fn: FitFn, counts: np.ndarray) -> np.ndarray | None:
    try:
        return np.asarray(fn(counts), dtype=float)
    except (ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError):
        return None  # a resample can be degenerate (e.g. one model size drawn); skip it


@single_threaded_blas
def _worker(task: tuple[FitFn, np.ndarray]) -> list[np.ndarray | None]:
    fn, chunk = task
    return [_safe(fn, c) for c in chunk]


def default_jobs() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def run_bootstrap(fn: FitFn, counts: np.ndarray, n_jobs: int = 1) -> np.ndarray:
    """Apply `fn` to every resample; rows of failed fits are NaN. Shape (n_boot, p)."""
    if n_jobs > 1 and len(counts) > 1:
        methods = mp.get_all_start_methods()
        if "fork" in methods and "torch" not in sys.modules:
            method = "fork"
        else:
            method = "forkserver" if "forkserver" in methods else "spawn"
        chunks = np.array_split(counts, min(len(counts), 4 * n_jobs))
        with mp.get_context(method).Pool(n_jobs) as pool:
            results = [r for part in pool.map(_worker, [(fn, c) for c in chunks]) for r in part]
    else:
        results = [_safe(fn, c) for c in counts]
    width = next((len(r) for r in results if r is not None), 0)
    out = np.full((len(counts), width), np.nan)
    for i, r in enumerate(results):
        if r is not None:
            out[i] = r
    return out


def replicates(
    fn: FitFn, n: int, n_boot: int, seed: int, n_jobs: int, strata: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Refit `fn` on `n_boot` resamples of `n` runs drawn from `seed` (within `strata` if
    given): the successful refits, one row each, and how many failed."""
    boot = run_bootstrap(fn, resample_counts(n, n_boot, seed, strata), n_jobs)
    ok = np.all(np.isfinite(boot), axis=1)
    return boot[ok], int((~ok).sum())


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column, ignoring failed (NaN) resamples."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    tail = 100 * (1 - level) / 2
    samples = np.atleast_2d(samples)
    ok = np.all(np.isfinite(samples), axis=1)
    if not ok.any():
        nan = np.full(samples.shape[1], np.nan)
        return nan, nan
    lo, hi = np.percentile(samples[ok], [tail, 100 - tail], axis=0)
    return lo, hi
