"""The issue's benchmark: a branched-WSD study vs a grid of separate runs over several model
sizes, the largest size held out and predicted by each.

Sizes: the tiny byte LM of curve_laws.py at several muP widths (head dimension fixed). The
largest width is never part of a study; it trains two reference runs (WSD and cosine) of
T = S + round(ratio * S) steps, S the last decay start, which each prediction is scored on.

- branched: per fitted size one stable run and a WSD decay branch per decay start
  (`plan_branched_wsd`), so it has the WSD final losses at every length for ~1.2 runs of cost.
  Predictions: (a) the final-loss law L(N, D) = E + A/N^a + B/D^b (approach 3) fitted on the
  branches' final losses, for the WSD reference; (b) the LR-annealing law across sizes
  (curve_sizes.py) fitted on every curve (stable runs included), for the WSD and the cosine
  reference, which no run of the study trained.
- grid: per fitted size one cosine run of each branch length, trained alone (one run per
  (N, D) point, Chinchilla's practice); L(N, D) fitted on their final losses predicts the
  cosine reference.

Compute is FLOPs from model_stats (branched_cost for the branched study). Fit choices are fixed
here before any held-out error is seen: evaluations from 15% of the last decay start (60 of
400 in curve_laws.py), the annealing momentum picked by the fit objective.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/scaling/branched_vs_isoflop.py \\
        [--root /tmp/bvi_runs] [--widths 32 64 96 128] [--decay-starts 100 200 300 400]

Writes into --out (default bench/scaling/branched_vs_isoflop/): the three sweeps, runs.csv,
curves.csv, results.csv (one row per study x prediction) and the fit-curves outputs of the law
across sizes. Runs already completed under --root are skipped, so an interrupted benchmark
resumes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = "configs/lm_bytes.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/branched_vs_isoflop_runs", help="where runs train")
    p.add_argument("--out", default=str(HERE / "branched_vs_isoflop"), help="tables, figures")
    p.add_argument("--widths", type=int, nargs="+", default=[32, 64, 96, 128],
                   help="muP widths, multiples of the head dimension; the largest is held out")
    p.add_argument("--decay-starts", type=int, nargs="+", default=[100, 200, 300, 400])
    p.add_argument("--decay-ratio", type=float, default=0.25)
    p.add_argument("--boot", type=int, default=30, help="bootstrap resamples per fit")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parents[1]))
    from curve_laws import SHARED

    from pretrain.config import load_config
    from pretrain.scaling_laws.branch_plan import branch_length, branched_cost, plan_branched_wsd
    from pretrain.scaling_laws.plan import (
        PlannedRun,
        candidate_shapes,
        model_stats_fn,
        mup_pins,
        read_sweep,
        write_sweep,
    )  # fmt: skip
    from pretrain.scaling_laws.runner import LOCAL_OVERRIDES, run_sweep

    cfg = load_config(RECIPE, SHARED)
    m = cfg.model
    shapes = candidate_shapes(m.width, m.num_heads, m.depth, sorted(args.widths), None)
    if len(shapes) != len(args.widths) or len(shapes) < 4:
        raise SystemExit(f"--widths {args.widths}: need 4 or more multiples of the head "
                         f"dimension {m.width // m.num_heads}")  # fmt: skip
    stats = model_stats_fn(RECIPE, SHARED)
    batch = cfg.data.global_batch_size
    root, out = Path(args.root), Path(args.out)
    starts = sorted(args.decay_starts)
    warmup = cfg.schedule.warmup_steps
    fitted, largest = shapes[:-1], shapes[-1]
    pins = {**mup_pins(m)}

    branched = plan_branched_wsd(fitted, starts, stats, batch, root / "branched",
                                 decay_ratio=args.decay_ratio, warmup_steps=warmup,
                                 family=m.family)  # fmt: skip
    lengths = [branch_length(s, args.decay_ratio) for s in starts]  # (steps, decay fraction)

    def alone(shape, steps: int, schedule: dict, tag: str) -> PlannedRun:
        st = stats(shape.overrides())
        name = f"{m.family}-w{shape.width}-d{shape.depth}-{tag}{steps}"
        overrides = {**shape.overrides(), "schedule.steps": steps, "schedule.warmup_steps": warmup,
                     "logging.eval_every_steps": max(1, steps // 10),
                     "logging.every_steps": max(1, steps // 20), "run.name": name,
                     **schedule}  # fmt: skip
        return PlannedRun(name, float(steps * batch * st["flops_per_sample"]), shape,
                          int(st["params"]), int(st["flops_per_sample"]),
                          int(st["tokens_per_sample"]), steps, overrides, batch)  # fmt: skip

    cosine = {"schedule.name": "cosine", "schedule.min_lr_ratio": 0.1}
    grid = [alone(s, steps, cosine, "cos") for s in fitted for steps, _ in lengths]
    total, fraction = lengths[-1]
    wsd = {"schedule.name": "wsd", "schedule.decay_fraction": fraction}
    truth = [alone(largest, total, wsd, "wsd"), alone(largest, total, cosine, "cos")]
    out.mkdir(parents=True, exist_ok=True)
    recipe = Path(RECIPE).resolve()
    outcomes = {}
    for study, runs in (("branched", branched), ("grid", grid), ("truth", truth)):
        for r in runs:
            r.overrides = {**pins, **r.overrides}
        write_sweep(out / f"{study}.yaml", str(recipe), runs)
        done = run_sweep(read_sweep(out / f"{study}.yaml"), root / study,
                         [*LOCAL_OVERRIDES, *SHARED])  # fmt: skip
        failed = [o.name for o in done if o.state == "failed"]
        if failed:
            print(f"{study}: failed runs {failed}", file=sys.stderr)
            return 1
        outcomes[study] = done
    spent, _ = branched_cost(branched)
    flops = {"branched": spent, "grid": sum(r.flops for r in grid),
             "truth": sum(r.flops for r in truth)}  # fmt: skip
    return report(outcomes, branched, truth, flops, out, args.boot, min_step=starts[-1] * 15 // 100)


def report(outcomes: dict, branched: list, truth: list, flops: dict, out: Path, boot: int,
           min_step: int) -> int:  # fmt: skip
    """Collect the runs, fit each study, score the predictions of the held-out size."""
    from pretrain.scaling_laws.collect import collect
    from pretrain.scaling_laws.curve_study import CurveOptions, fit_curves_and_report
    from pretrain.scaling_laws.parametric import fit_parametric
    from pretrain.scaling_laws.schedule_curves import scheduled_curves
    from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, read_runs, write_csv

    got = collect([o.run_dir for done in outcomes.values() for o in done])
    study_of = {o.name: s for s, done in outcomes.items() for o in done}
    for row in got.runs:  # keep the committed tables free of this machine's paths
        row["run_dir"] = f"{study_of[row['name']]}/{Path(row['run_dir']).name}"
        row["branch_of"] = "/".join(Path(row["branch_of"]).parts[-3:]) if row["branch_of"] else ""
    write_csv(out / "runs.csv", got.runs, RUN_COLUMNS)
    write_csv(out / "curves.csv", got.curves, CURVE_COLUMNS)
    rows = {r["name"]: r for r in read_runs(out / "runs.csv").rows}
    wsd_truth, cos_truth = (rows[t.name] for t in truth)
    n_max = float(wsd_truth["params"])
    results = []

    def final_law(study: str, names: list[str], target: dict) -> None:
        sub = [rows[n] for n in names]
        fit = fit_parametric([r["params"] for r in sub], [r["tokens"] for r in sub],
                             [r["loss"] for r in sub], n_boot=boot)  # fmt: skip
        pred = fit.interval(lambda law: float(law.loss(n_max, float(target["tokens"]))))
        results.append(row_of(study, "L(N,D) on final losses", target, pred, flops[study]))

    final_law("branched", [r.name for r in branched if r.overrides["schedule.name"] == "wsd"],
              wsd_truth)  # fmt: skip
    final_law("grid", [o.name for o in outcomes["grid"]], cos_truth)

    curves = scheduled_curves(read_runs(out / "runs.csv"), out / "curves.csv")
    names = {r.name for r in branched} | {t.name for t in truth}
    # the references are held out (by size); a branch that ends before min_step (an early decay
    # start) has no evaluation the curve law reads: it counts in L(N, D) above only
    curves = [c for c in curves if c.name in names and c.steps.max() >= min_step]
    opts = CurveOptions(laws=["lr_annealing"], holdout=[t.name for t in truth], lam=None,
                        min_step=min_step, n_boot=boot, n_jobs=1, across_sizes=True,
                        holdout_sizes=["largest"])  # fmt: skip
    joint = fit_curves_and_report(curves, opts, out).joint
    by_label = {c.name: c.schedule for c in curves}
    for target in (wsd_truth, cos_truth):
        pred = joint.predict_final(by_label[target["name"]], n_max)
        results.append(row_of("branched", "curve law across sizes", target, pred,
                              flops["branched"]))  # fmt: skip
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    for r in results:
        print(f"{r['study']:<9} {r['method']:<24} -> {r['target']:<22} observed "
              f"{r['observed']:.4f} predicted {r['predicted']:.4f} ({r['rel_error']:+.2%}) "
              f"[{r['lo']:.4f}, {r['hi']:.4f}]  {r['flops']:.3g} FLOPs")  # fmt: skip
    ratio = flops["grid"] / flops["branched"]
    print(f"compute: branched {flops['branched']:.3g} FLOPs, grid {flops['grid']:.3g} "
          f"({ratio:.2f}x the branched study); references {flops['truth']:.3g}")
    return 0


def row_of(study: str, method: str, target: dict, pred, flops: float) -> dict:
    observed = float(target["loss"])
    return {"study": study, "method": method, "target": target["name"],
            "observed": round(observed, 5), "predicted": round(pred.value, 5),
            "rel_error": round(pred.value / observed - 1, 5), "lo": round(pred.lo, 5),
            "hi": round(pred.hi, 5), "flops": flops}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
