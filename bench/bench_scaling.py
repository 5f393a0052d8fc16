"""Benchmark: approach 3 (Huber L(N, D) fit) with 1000 bootstrap resamples on ~250 runs.

Target (issue 8): under 60 s on 2 CPU cores. Also times a notebook-style baseline on the same
data (scipy L-BFGS-B with finite-difference gradients, the same starts) on a few resamples and
extrapolates it to 1000, to show what the analytic gradient, warm starts and single-threaded
BLAS buy.

    PYTHONPATH=. python bench/bench_scaling.py [--runs 250] [--boot 1000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.bootstrap import resample_counts
from pretrain.scaling_laws.huber_fit import HuberProblem, minimize_from, objective
from pretrain.scaling_laws.parametric import BOUNDS, fit_parametric


def per_resample_seconds(
    prob: HuberProblem, starts: np.ndarray, n: int, analytic: bool, one_blas_thread: bool
) -> float:
    """Serial seconds per bootstrap refit from `starts`, with analytic or finite-difference
    gradients (what a notebook typically runs), with or without the one-BLAS-thread limit."""
    counts = resample_counts(prob.X.shape[0], n, seed=123)
    limit = threadpool_limits(1, user_api="blas") if one_blas_thread else contextlib.nullcontext()
    t0 = time.perf_counter()
    with limit:
        for c in counts:
            sub = prob.with_weights(c)
            for x0 in starts:
                if analytic:
                    minimize_from(np.array([x0]), sub, BOUNDS)
                else:
                    minimize(
                        lambda th, s=sub: objective(th, s)[0],
                        x0,
                        method="L-BFGS-B",
                        bounds=BOUNDS,
                        options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-9},
                    )
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=250, help="synthetic runs (10 budgets x runs/10)")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes for the bootstrap")
    ap.add_argument(
        "--baseline-resamples",
        type=int,
        default=20,
        help="resamples timed for the serial per-refit comparison",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    per = max(3, args.runs // 10)
    r = S.isoflop_runs(
        budgets=np.geomspace(1e18, 1e21, 10),
        points=per,
        spread=40,
        noise=0.01,
        n_outliers=max(1, args.runs // 50),
        seed=0,
    )
    print(
        f"{len(r.N)} runs ({r.outlier.sum()} outliers), {args.boot} resamples, "
        f"{args.jobs} jobs, {os.cpu_count()} CPUs visible, {platform.processor() or '?'}"
    )
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_parametric(r.N, r.D, r.L, n_boot=args.boot, n_jobs=args.jobs, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    fit_parametric(r.N, r.D, r.L)
    point = time.perf_counter() - t1
    prob = HuberProblem(
        np.column_stack([np.log(r.N), np.log(r.D)]), np.log(r.L), np.ones(len(r.N)), 1e-3
    )
    starts = np.array([fit.law.theta])
    k = args.baseline_resamples
    variants = {
        "analytic_grad_1_blas_thread": per_resample_seconds(prob, starts, k, True, True),
        "analytic_grad_default_blas": per_resample_seconds(prob, starts, k, True, False),
        "finite_diff_grad_1_blas_thread": per_resample_seconds(prob, starts, k, False, True),
    }
    opt = fit.compute_optimal(1e22)
    result = {
        "runs": len(r.N),
        "resamples": args.boot,
        "failed_resamples": fit.n_boot_failed,
        "jobs": args.jobs,
        "wall_s": round(wall, 2),
        # CPU seconds of this process: the whole fit when --jobs 1 (workers are not counted)
        "cpu_s_this_process": round(cpu, 2),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "point_fit_s": round(point, 3),
        "per_resample_ms": round(1000 * (wall - point) / args.boot * args.jobs, 2),
        "serial_ms_per_refit_1_start": {k: round(1000 * v, 2) for k, v in variants.items()},
        "params": {k: str(v) for k, v in fit.params.items()},
        "true": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        "N_opt_1e22": str(opt["N_opt"]),
        "tokens_per_param_1e22": str(opt["tokens_per_param"]),
    }
    print(json.dumps(result, indent=2))
    print(
        f"{'PASS' if wall < 60 else 'FAIL'}: {wall:.1f} s for {args.boot} resamples (target < 60 s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
