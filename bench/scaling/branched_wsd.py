"""Branched WSD on real curves: one stable run of the tiny byte LM of curve_laws.py and four
decay branches resumed from its checkpoints (`pretrain scaling plan-branches`); the curve laws
fitted on the stable run and the three shorter branches predict the longest branch's final loss.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/scaling/branched_wsd.py [--root /tmp/branched]

Writes into bench/scaling/branched_wsd/: sweep.yaml (+ .plan.csv), runs.csv, curves.csv,
errors.csv and the fit-curves outputs; prints the compute the branches saved.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "branched_wsd"
RECIPE = "configs/lm_bytes.yaml"
DECAY_STARTS = [100, 200, 300, 400]
DECAY_RATIO = 0.25


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/branched_wsd_runs", help="where the runs train")
    p.add_argument("--boot", type=int, default=100)
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parents[1]))
    from curve_laws import MIN_STEP, SHARED

    from pretrain.config import load_config
    from pretrain.scaling_laws.branch_plan import branched_cost, plan_branched_wsd
    from pretrain.scaling_laws.collect import collect
    from pretrain.scaling_laws.curve_study import CurveOptions, fit_curves_and_report
    from pretrain.scaling_laws.plan import Shape, model_stats_fn, read_sweep, write_sweep
    from pretrain.scaling_laws.runner import LOCAL_OVERRIDES, run_sweep
    from pretrain.scaling_laws.schedule_curves import scheduled_curves
    from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, read_runs, write_csv

    cfg = load_config(RECIPE, SHARED)
    m = cfg.model
    runs = plan_branched_wsd([Shape(m.width, m.depth, m.num_heads)], DECAY_STARTS,
                             model_stats_fn(RECIPE, SHARED), cfg.data.global_batch_size,
                             Path(args.root), decay_ratio=DECAY_RATIO,
                             warmup_steps=cfg.schedule.warmup_steps, family=m.family)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    write_sweep(OUT / "sweep.yaml", f"../../../{RECIPE}", runs)  # relative to the sweep file
    outcomes = run_sweep(read_sweep(OUT / "sweep.yaml"), Path(args.root),
                         [*LOCAL_OVERRIDES, *SHARED])  # fmt: skip
    if any(o.state == "failed" for o in outcomes):
        print(f"failed: {[o.name for o in outcomes if o.state == 'failed']}", file=sys.stderr)
        return 1
    got = collect([o.run_dir for o in outcomes])
    for row in got.runs:  # keep the committed tables free of this machine's paths
        row["run_dir"] = Path(row["run_dir"]).name
        row["branch_of"] = str(Path(row["branch_of"]).relative_to(args.root)) if row[
            "branch_of"] else ""  # fmt: skip
    write_csv(OUT / "runs.csv", got.runs, RUN_COLUMNS)
    write_csv(OUT / "curves.csv", got.curves, CURVE_COLUMNS)
    curves = scheduled_curves(read_runs(OUT / "runs.csv"), OUT / "curves.csv")
    held = runs[-1].name  # the longest branch
    opts = CurveOptions(laws=["lr_annealing", "multi_power"], holdout=[held], lam=None,
                        min_step=MIN_STEP, n_boot=args.boot, n_jobs=1)  # fmt: skip
    (size,) = fit_curves_and_report(curves, opts, OUT).sizes
    spent, alone = branched_cost(runs)
    rows = []
    for law, fit in size.fits.items():
        r = next(r for r in fit.runs if r["held_out"])
        iv = r["predicted_interval"] or {}
        rows.append({"law": law, "held_out": held, "observed_final": round(r["observed"], 5),
                     "predicted_final": round(r["predicted"], 5),
                     "rel_error": round(r["rel_error"], 5),
                     "interval_lo": round(iv.get("lo", float("nan")), 5),
                     "interval_hi": round(iv.get("hi", float("nan")), 5),
                     "flops_branched": spent, "flops_unbranched": alone})  # fmt: skip
        print(f"{law:<13} held out {held}: final {r['observed']:.4f}, predicted "
              f"{r['predicted']:.4f} ({r['rel_error']:+.2%}) [{iv.get('lo', float('nan')):.4f}, "
              f"{iv.get('hi', float('nan')):.4f}]")  # fmt: skip
    with open(OUT / "errors.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"compute: {spent:.3g} FLOPs branched vs {alone:.3g} for the same WSD runs alone "
          f"({alone / spent:.2f}x less)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
