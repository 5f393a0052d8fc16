"""Real-curve demo of the loss-curve laws: a tiny byte-level LM trained on CPU under three LR
schedules (constant, cosine, WSD), each law fitted on two schedules predicts the third's curve
and final validation loss.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/scaling/curve_laws.py [--root /tmp/curve_runs]

Trains the three runs of bench/scaling/curve_laws_sweep.yaml (skipped when already completed
under --root), collects them and writes into bench/scaling/curve_laws/: runs.csv, curves.csv,
errors.csv (one row per law x held-out schedule) and, for the WSD hold-out, the fit-curves
outputs (curve_fits.png, curve_fits.json, curve_report.md); the other hold-outs' outputs go
to ROOT/holdout-NAME/. With two fitted runs the bootstrap over runs has a single distinct
resample, so the interval columns of errors.csv equal the estimate (no interval).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEP = HERE / "curve_laws_sweep.yaml"
OUT = HERE / "curve_laws"
# one tiny LM for every run (a shared 2-core CPU): ~30 s per 400-step run when idle
SHARED = [
    "model.width=64", "model.depth=2", "model.num_heads=2", "model.lm.seq_len=64",
    "data.seq_len=64", "data.global_batch_size=16", "data.eval_batch_size=32",
    "optim.lr=3e-3", "schedule.steps=400", "schedule.warmup_steps=20",
    "logging.eval_every_steps=20", "logging.every_steps=20", "logging.eval_batches=4",
    "model.attn_entropy=false",
]  # fmt: skip
# Fit choices, fixed before looking at any held-out error: evaluations from step 60 (warmup ends
# at 20; the laws describe the curve after the early transient), the LR-annealing momentum
# picked by the fit objective on the two fitted runs (400-step runs are far shorter than the
# thousands of steps lam = 0.999 is meant for).
MIN_STEP = 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/curve_law_runs", help="where the runs train")
    p.add_argument("--boot", type=int, default=100)
    args = p.parse_args()
    sys.path.insert(0, str(HERE.parents[1]))
    from pretrain.scaling_laws.collect import collect
    from pretrain.scaling_laws.curve_study import CurveOptions, fit_curves_and_report
    from pretrain.scaling_laws.plan import read_sweep
    from pretrain.scaling_laws.runner import LOCAL_OVERRIDES, run_sweep
    from pretrain.scaling_laws.schedule_curves import scheduled_curves
    from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, read_runs, write_csv

    outcomes = run_sweep(read_sweep(SWEEP), Path(args.root), [*LOCAL_OVERRIDES, *SHARED])
    failed = [o.name for o in outcomes if o.state == "failed"]
    if failed:
        print(f"failed runs: {failed}", file=sys.stderr)
        return 1
    got = collect([o.run_dir for o in outcomes])
    OUT.mkdir(parents=True, exist_ok=True)
    for row in got.runs:  # keep the committed table free of this machine's paths
        row["run_dir"] = Path(row["run_dir"]).name
    write_csv(OUT / "runs.csv", got.runs, RUN_COLUMNS)
    write_csv(OUT / "curves.csv", got.curves, CURVE_COLUMNS)
    curves = scheduled_curves(read_runs(OUT / "runs.csv"), OUT / "curves.csv")
    rows = []
    for held in [c.name for c in curves]:
        opts = CurveOptions(laws=["lr_annealing", "multi_power"], holdout=[held], lam=None,
                            min_step=MIN_STEP, n_boot=args.boot, n_jobs=1)  # fmt: skip
        target = OUT if held == "lm-wsd" else Path(args.root) / f"holdout-{held}"
        (size,) = fit_curves_and_report(curves, opts, target).sizes
        for law, fit in size.fits.items():
            r = next(r for r in fit.runs if r["held_out"])
            iv = r["predicted_interval"] or {}
            rows.append({"law": law, "held_out": held, "schedule": r["schedule"],
                         "lam": fit.law.lam if law == "lr_annealing" else "",
                         "observed_final": round(r["observed"], 5),
                         "predicted_final": round(r["predicted"], 5),
                         "rel_error": round(r["rel_error"], 5),
                         "interval_lo": round(iv.get("lo", float("nan")), 5),
                         "interval_hi": round(iv.get("hi", float("nan")), 5),
                         "fit_rmse_log": round(fit.quality.rmse_log, 5),
                         "holdout_rmse_log": round(fit.holdout_quality.rmse_log, 5)})  # fmt: skip
    with open(OUT / "errors.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['law']:<13} held out {r['held_out']:<12} final {r['observed_final']:.4f} "
              f"predicted {r['predicted_final']:.4f} ({r['rel_error']:+.2%}); curve RMSE(log) "
              f"{r['holdout_rmse_log']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
