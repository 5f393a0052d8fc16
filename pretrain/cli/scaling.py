"""`pretrain scaling {plan,run,collect,fit,fit-curves,study}`: argument parsing only; the work
is in the modules named in each handler."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from textwrap import fill

from pretrain.scaling_laws.validate import ScalingDataError

DESCRIPTION = """\
Scaling-law studies: plan an IsoFLOP grid of model sizes x token budgets from a base recipe,
run it (locally, or with `pretrain slurm sweep SWEEP`), collect final losses from the run
directories, and fit Chinchilla-style laws with bootstrap confidence intervals:
  approach 1  envelope of training curves        -> N_opt(C), D_opt(C)
  approach 2  IsoFLOP parabolas                   -> N_opt(C), D_opt(C)
  approach 3  L(N, D) = E + A/N^alpha + B/D^beta  (Huber on log-loss, L-BFGS from a grid)
  frontier    L(C) = E + A*C^-alpha
"""

STUDY_EPILOG = """\
Toy study on CPU (digits ViT, 3 budgets x 4 sizes, a few minutes):
  pretrain scaling study --base configs/vit_digits.yaml --budgets 5e9 1.5e10 5e10 --points 4 \\
      --widths 16 32 48 64 --depths 1 2 --out runs/scaling_toy --target 1e12
Outputs in --out: sweep.yaml (+ .plan.csv), runs/, runs.csv, curves.csv, fits.json, report.md,
loss_vs_compute.png, isoflop.png, optimal_allocation.png. Re-running skips completed runs.
Refit with other options: pretrain scaling fit OUT/runs.csv --curves OUT/curves.csv -o OUT/fit2
"""

CURVES_EPILOG = """\
Example: fit on two schedules, predict the third and a schedule never trained:
  pretrain scaling collect runs/lm_cosine runs/lm_constant runs/lm_wsd -o runs.csv \\
      --curves curves.csv
  pretrain scaling fit-curves runs.csv --curves curves.csv --holdout lm_wsd \\
      --predict wsd:steps=4000,warmup_steps=20,decay_fraction=0.1,lr=3e-3 -o curve_fit/
One law across model sizes, scored on the largest:
  pretrain scaling fit-curves runs.csv --curves curves.csv --across-sizes \\
      --holdout-size largest -o sizes/
"""

PLAN_EPILOG = """\
examples:
  pretrain scaling plan --base configs/vit_digits.yaml --budgets 5e9 1.5e10 5e10 --points 4 \\
      --widths 16 32 48 64 --depths 1 2 -o sweeps/digits.yaml   # a toy grid, CPU-sized
  pretrain scaling plan --base configs/lm_gpt2_small.yaml --budgets 3e16 1e17 3e17 1e18 \\
      --depths 6 12 --set data.global_batch_size=256 -o sweeps/iso.yaml
Then: pretrain slurm sweep sweeps/iso.yaml (runs in runs/iso/NAME), or pretrain scaling run.
"""

BRANCHES_EPILOG = """\
examples:
  pretrain scaling plan-branches --base configs/lm_bytes.yaml --decay-starts 1000 2000 3000 \\
      --widths 64 128 -o sweeps/wsd.yaml
  pretrain scaling plan-branches --base configs/lm_gpt2_small.yaml \\
      --decay-starts 4000 8000 16000 --decay-ratio 0.2 --root runs/wsd_gpt2 -o sweeps/wsd_gpt2.yaml
Then: pretrain slurm sweep sweeps/wsd_gpt2.yaml --root runs/wsd_gpt2 (the same --root).
"""

RUN_EPILOG = """\
examples:
  pretrain scaling run sweeps/digits.yaml   # into runs/digits/NAME; completed runs are skipped
  pretrain scaling run sweeps/digits.yaml --threads 2 --set data.num_workers=0
  pretrain scaling run sweeps/wsd.yaml   # each stable run, then its decay branches
"""

COLLECT_EPILOG = """\
examples:
  pretrain scaling collect --sweep sweeps/iso.yaml -o runs.csv --curves curves.csv
  pretrain scaling collect runs/lm_cosine runs/lm_constant runs/lm_wsd -o runs.csv \\
      --curves curves.csv --smooth 3   # final loss: the mean of the last 3 evaluations
"""

FIT_EPILOG = """\
examples:
  pretrain scaling fit runs.csv --curves curves.csv -o fit/ --target 1e21
  pretrain scaling fit runs.csv -o fit_holdout/ --holdout-largest 1 --predict 1e9,2e10 \\
      --params-column params_non_embedding   # score a fit on the largest budget's runs
"""

COMPARE_EPILOG = """\
examples:
  pretrain scaling compare study_a/runs.csv study_b/runs.csv -o compare/
  pretrain scaling compare runs/scaling_sp runs/scaling_mup --names SP muP \\
      --target 1e12 1e13 -o compare_mup/   # `scaling study --out` directories
"""


WIDTH = 92  # descriptions are wrapped here: the raw formatter keeps the examples' lines as written


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base YAML recipe every run starts from")
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        required=True,
        metavar="FLOPS",
        help="training compute budgets in FLOPs (at least 2)",
    )
    p.add_argument(
        "--family",
        choices=["vit", "dit", "lm"],
        help="model family (default: the recipe's model.family)",
    )
    p.add_argument(
        "--points",
        type=int,
        default=5,
        metavar="K",
        help="model sizes per budget (>= 3; default 5)",
    )
    p.add_argument(
        "--widths",
        type=int,
        nargs="+",
        help="candidate widths, multiples of the head dim (default 1..16 head dims)",
    )
    p.add_argument("--depths", type=int, nargs="+", help="candidate depths (default: recipe's)")
    p.add_argument(
        "--tokens-per-param",
        type=float,
        default=20.0,
        help="centre of each IsoFLOP profile in tokens per parameter (default 20)",
    )
    p.add_argument(
        "--min-steps",
        type=int,
        default=20,
        help="shapes needing fewer optimizer steps are left out (default 20)",
    )
    p.add_argument(
        "--evals",
        type=int,
        default=10,
        help="evaluations per run, for approach-1 curves (default 10)",
    )
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for every run (repeatable), "
                   "e.g. data.global_batch_size=32")  # fmt: skip


def _add_bootstrap_args(p: argparse.ArgumentParser, boot: int, delta_help: str) -> None:
    """The fit options every fitting command shares: resamples, interval level, Huber delta,
    workers and seed."""
    p.add_argument("--boot", type=int, default=boot, help=f"bootstrap resamples (default {boot})")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--delta", type=float, default=1e-3, help=f"{delta_help} (default 1e-3)")
    p.add_argument("--jobs", type=int, default=0, help="bootstrap worker processes (0: all CPUs)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    _add_bootstrap_args(p, 1000, "Huber threshold on log-loss residuals")
    p.add_argument(
        "--holdout-largest",
        type=int,
        default=0,
        metavar="K",
        help="hold out the runs of the K largest budgets and report the error on them",
    )
    p.add_argument(
        "--target",
        type=float,
        nargs="*",
        default=[],
        metavar="FLOPS",
        help="budgets at which to predict compute-optimal N, D and tokens/param",
    )
    p.add_argument(
        "--predict",
        nargs="*",
        default=[],
        metavar="N,D",
        help="(params, tokens) pairs at which to predict the loss (approach 3)",
    )
    p.add_argument(
        "--params-column",
        default="params",
        choices=["params", "params_non_embedding"],
        help="what N counts (default params)",
    )
    p.add_argument(
        "--flops-per-param-token",
        type=float,
        default=None,
        metavar="K",
        help="approach 3 allocates with C = K*N*D (default: measured from the runs)",
    )
    p.add_argument(
        "--min-progress",
        type=float,
        default=0.1,
        help="approach 1 ignores this first fraction of each curve (default 0.1)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("scaling", help="plan, collect and fit scaling-law studies",
                              description=DESCRIPTION, formatter_class=raw)  # fmt: skip
    sub = p.add_subparsers(dest="scaling_command", metavar="SUBCOMMAND", required=True)

    pp = sub.add_parser("plan", help="write an IsoFLOP sweep file from a base recipe",
                        description=fill("Plan an IsoFLOP grid: per budget, K model shapes (muP "
                        "widths x depths of the base recipe) with steps from the models' own "
                        "FLOPs accounting; writes a sweep YAML for `pretrain slurm sweep` or "
                        "`pretrain scaling run`, and a .plan.csv table.", WIDTH),
                        epilog=PLAN_EPILOG, formatter_class=raw)  # fmt: skip
    _add_plan_args(pp)
    pp.add_argument("-o", "--output", default="sweep.yaml", help="sweep file to write")
    pp.set_defaults(func=cmd_plan)

    pb = sub.add_parser("plan-branches", help="plan WSD runs branched from shared stable runs",
                        description=fill("Per model shape: one stable run (constant LR, "
                        "a checkpoint at every decay start) and, for each decay start S, a "
                        "short WSD decay branch resumed from the stable run's checkpoint at S "
                        "(the WSD run of S + round(ratio*S) steps, at a fraction of its cost). "
                        "Writes a sweep whose branches resume from ROOT/NAME-stable/checkpoints "
                        "and wait for their stable run (`after`): `pretrain scaling run SWEEP` "
                        "runs them in order, `pretrain slurm sweep SWEEP` submits each branch "
                        "with --dependency=afterok on its stable run's job (use the same "
                        "--root); a requeued branch resumes from its own newest checkpoint.",
                        WIDTH),
                        epilog=BRANCHES_EPILOG, formatter_class=raw)  # fmt: skip
    pb.add_argument("--base", required=True, help="base YAML recipe every run starts from")
    pb.add_argument("--decay-starts", type=int, nargs="+", required=True, metavar="STEP",
                    help="steps at which a branch starts decaying (the stable run's length is "
                    "the largest)")  # fmt: skip
    pb.add_argument(
        "--decay-ratio",
        type=float,
        default=0.25,
        help="decay steps as a fraction of the decay start (default 0.25)",
    )
    pb.add_argument(
        "--family",
        choices=["vit", "dit", "lm"],
        help="model family (default: the recipe's model.family)",
    )
    pb.add_argument("--widths", type=int, nargs="+", help="widths (default: the recipe's)")
    pb.add_argument("--depths", type=int, nargs="+", help="depths (default: the recipe's)")
    pb.add_argument("--evals", type=int, default=10, help="evaluations per run (default 10)")
    pb.add_argument("--root", help="parent of the run directories (default runs/<sweep stem>)")
    pb.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for every run (repeatable)",
    )
    pb.add_argument("-o", "--output", default="sweep.yaml", help="sweep file to write")
    pb.set_defaults(func=cmd_plan_branches)

    pr = sub.add_parser("run", help="run a sweep's runs one after another on this machine",
                        description=fill("Train every run of a sweep file in sequence in this "
                        "process (single backend, no checkpoints); "
                        "completed runs are skipped.", WIDTH),
                        epilog=RUN_EPILOG, formatter_class=raw)  # fmt: skip
    pr.add_argument("sweep", help="sweep YAML from `pretrain scaling plan`")
    pr.add_argument("--root", help="parent of the run directories (default runs/<sweep stem>)")
    pr.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    pr.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    pr.set_defaults(func=cmd_run)

    pc = sub.add_parser("collect", help="read run directories into runs.csv (and curves.csv)",
                        description=fill("Read each run's config.yaml, model_stats.json, "
                        "metrics.jsonl and status.json; write one row per completed run "
                        "(params, tokens, FLOPs, final loss) and the eval curves.", WIDTH),
                        epilog=COLLECT_EPILOG, formatter_class=raw)  # fmt: skip
    pc.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories")
    pc.add_argument("--sweep", help="take the run directories from this sweep file")
    pc.add_argument("--root", help="with --sweep: parent of the runs (default runs/<sweep stem>)")
    pc.add_argument("-o", "--output", default="runs.csv", help="runs table to write")
    pc.add_argument("--curves", help="also write the training curves here (for approach 1)")
    pc.add_argument(
        "--smooth",
        type=int,
        default=1,
        help="final loss = mean of the last K evaluations (default 1)",
    )
    pc.add_argument("--include-incomplete", action="store_true",
                    help="keep runs whose status is not 'completed'")  # fmt: skip
    pc.set_defaults(func=cmd_collect)

    pf = sub.add_parser("fit", help="fit the laws, predict, plot and write a report",
                        description=fill("Fit approaches 1-3 and the compute frontier to a runs "
                        "table, with bootstrap intervals; "
                        "writes fits.json, report.md and PNGs.", WIDTH),
                        epilog=FIT_EPILOG, formatter_class=raw)  # fmt: skip
    pf.add_argument("runs", help="runs.csv from `collect` (columns name,params,tokens,flops,loss)")
    pf.add_argument("--curves", help="curves.csv from `collect` (enables approach 1)")
    pf.add_argument("-o", "--out", default="scaling_fit", help="output directory")
    _add_fit_args(pf)
    pf.set_defaults(func=cmd_fit)

    pk = sub.add_parser("fit-curves", help="fit loss-curve laws across LR schedules, predict",
                        description=fill("Fit the LR-annealing law (Tissue et al. 2024) and the "
                        "multi-power law (Luo et al. 2025) to the training curves of runs "
                        "under different LR schedules (one law per model size), with "
                        "bootstrap intervals over runs; score held-out runs and predict the "
                        "final loss of schedules never trained. Writes curve_fits.json, "
                        "curve_fits.png and curve_report.md.", WIDTH),
                        epilog=CURVES_EPILOG, formatter_class=raw)  # fmt: skip
    pk.add_argument("runs", help="runs.csv from `collect` (with the schedule columns)")
    pk.add_argument("--curves", required=True, help="curves.csv from `collect` (step, loss)")
    pk.add_argument("-o", "--out", default="curve_fit", help="output directory")
    pk.add_argument(
        "--law",
        nargs="+",
        default=["lr_annealing", "multi_power"],
        choices=["lr_annealing", "multi_power"],
        help="laws to fit (default both)",
    )
    pk.add_argument(
        "--holdout",
        nargs="*",
        default=[],
        metavar="RUN",
        help="runs scored but not fitted (their final-loss error is reported)",
    )
    pk.add_argument(
        "--predict",
        nargs="*",
        default=[],
        metavar="SCHEDULE",
        help="schedules to predict, e.g. wsd:steps=2000,decay_fraction=0.1,lr=1e-3",
    )
    pk.add_argument(
        "--lam",
        default="0.999",
        help="LR-annealing law: momentum of LR drops, or 'fit' to pick it by the "
        "fit objective (default 0.999, for runs of thousands of steps)",
    )
    pk.add_argument(
        "--min-step",
        type=int,
        default=0,
        help="leave out evaluations before this step (the early transient)",
    )
    ps = pk.add_argument_group("one law across model sizes (curve_sizes.py)")
    ps.add_argument("--across-sizes", action="store_true",
                    help="also fit the LR-annealing law with its coefficients power laws in the "
                    "model size N, to every size not held out (needs 3 or more sizes)")
    ps.add_argument("--holdout-size", action="append", default=[], metavar="N",
                    help="runs of this size (parameters, or 'largest') are scored, not fitted, "
                    "by the law across sizes (repeatable)")  # fmt: skip
    ps.add_argument("--predict-size", action="append", default=[], type=float, metavar="N",
                    help="predict the final loss of a model of N parameters under each "
                    "--predict schedule (else each trained schedule); repeatable")  # fmt: skip
    ps.add_argument("--shared-schedule-terms", action="store_true",
                    help="across sizes, only L0 depends on N (A, C shared): fewer parameters")
    _add_bootstrap_args(pk, 200, "Huber threshold on relative residuals")
    pk.set_defaults(func=cmd_fit_curves)

    pv = sub.add_parser("compare", help="compare two studies by their compute frontiers",
                        description=fill("Fit L(C) = E + A*C^-alpha to the Pareto frontier of "
                        "each study's final losses (bootstrap included); report where the "
                        "frontiers cross and, at each --target compute, the probability that A "
                        "beats B. Writes compare.json and compare.png.", WIDTH),
                        epilog=COMPARE_EPILOG, formatter_class=raw)  # fmt: skip
    pv.add_argument("study_a", metavar="STUDY_A", help="runs.csv, or a directory holding one")
    pv.add_argument("study_b", metavar="STUDY_B", help="runs.csv, or a directory holding one")
    pv.add_argument("--names", nargs=2, metavar=("A", "B"), help="labels (default: the paths)")
    pv.add_argument(
        "--target",
        type=float,
        nargs="*",
        default=[],
        metavar="FLOPS",
        help="computes at which to give P(A beats B)",
    )
    pv.add_argument("-o", "--out", default="scaling_compare", help="output directory")
    _add_bootstrap_args(pv, 1000, "Huber threshold on log-loss residuals")
    pv.set_defaults(func=cmd_compare)

    ps = sub.add_parser("study", help="plan, run locally, collect, fit and plot in one command",
                        description=fill("End-to-end toy study: plan an IsoFLOP grid, train "
                        "every run on this machine, collect, fit all approaches, plot and "
                        "report.", WIDTH),
                        epilog=STUDY_EPILOG, formatter_class=raw)  # fmt: skip
    _add_plan_args(ps)
    ps.add_argument("--out", required=True, help="study directory (runs go to OUT/runs)")
    ps.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    _add_fit_args(ps)
    ps.set_defaults(func=cmd_study)


def _options(args: argparse.Namespace):
    from pretrain.scaling_laws.analysis import Options
    from pretrain.scaling_laws.bootstrap import default_jobs

    pairs = []
    for text in args.predict:
        try:
            n, d = (float(x) for x in text.split(","))
        except ValueError:
            raise ScalingDataError(f"--predict {text!r}: expected N,D such as 1e9,2e10") from None
        pairs.append((n, d))
    return Options(
        n_boot=args.boot, level=args.level, delta=args.delta, seed=args.seed,
        n_jobs=args.jobs or default_jobs(), holdout_largest=args.holdout_largest,
        params_column=args.params_column, k_flops=args.flops_per_param_token,
        targets=list(args.target), predict_nd=pairs, min_progress=args.min_progress,
    )  # fmt: skip


def cmd_plan(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.scaling_laws.plan import (
        candidate_shapes,
        model_stats_fn,
        mup_pins,
        parse_sets,
        plan_isoflop,
        write_sweep,
    )  # fmt: skip

    extra = ([f"model.family={args.family}"] if args.family else []) + args.extra
    cfg = load_config(args.base, extra)
    shapes = candidate_shapes(cfg.model.width, cfg.model.num_heads, cfg.model.depth,
                              args.widths, args.depths)  # fmt: skip
    stats_fn = model_stats_fn(args.base, extra)
    runs = plan_isoflop(
        args.budgets, args.points, shapes, stats_fn, cfg.data.global_batch_size,
        base_steps=cfg.schedule.steps, base_warmup=cfg.schedule.warmup_steps,
        tokens_per_param=args.tokens_per_param, min_steps=args.min_steps,
        evals_per_run=args.evals, family=cfg.model.family,
    )  # fmt: skip
    fixed = {**parse_sets(extra), **mup_pins(cfg.model)}  # muP: the base head dim
    for r in runs:
        r.overrides = {**fixed, **r.overrides}
    sidecar = write_sweep(args.output, args.base, runs)
    print(f"{'run':<28} {'budget':>8} {'params':>9} {'steps':>6} {'tokens/param':>12}")
    for r in runs:
        print(f"{r.name:<28} {r.budget:>8.2g} {r.params:>9d} {r.steps:>6d} "
              f"{r.tokens / r.params:>12.3g}")  # fmt: skip
    note = stats_fn(runs[0].shape.overrides()).get("flops_note", "")
    print(f"FLOPs accounting ({cfg.model.family}): {note}")
    print(f"wrote {args.output} ({len(runs)} runs) and {sidecar}")
    print(f"next: pretrain slurm sweep {args.output}   (or locally: pretrain scaling run "
          f"{args.output}); runs go to runs/{Path(args.output).stem}/NAME")  # fmt: skip
    return 0


def cmd_plan_branches(args: argparse.Namespace) -> int:
    from launch.sweep import sweep_root
    from pretrain.config import load_config
    from pretrain.scaling_laws.branch_plan import branched_cost, plan_branched_wsd
    from pretrain.scaling_laws.plan import (
        candidate_shapes,
        model_stats_fn,
        mup_pins,
        parse_sets,
        write_sweep,
    )  # fmt: skip

    extra = ([f"model.family={args.family}"] if args.family else []) + args.extra
    cfg = load_config(args.base, extra)
    m = cfg.model
    shapes = candidate_shapes(m.width, m.num_heads, m.depth, args.widths or [m.width],
                              args.depths)  # fmt: skip
    runs = plan_branched_wsd(
        shapes, args.decay_starts, model_stats_fn(args.base, extra),
        cfg.data.global_batch_size, sweep_root(args.output, args.root),
        decay_ratio=args.decay_ratio, warmup_steps=cfg.schedule.warmup_steps,
        evals_per_run=args.evals, family=m.family,
    )  # fmt: skip
    fixed = {**parse_sets(extra), **mup_pins(cfg.model)}  # muP: the base head dim
    for r in runs:
        r.overrides = {**fixed, **r.overrides}
    sidecar = write_sweep(args.output, args.base, runs)
    for r in runs:
        print(f"{r.name:<32} {r.params:>9d} params {r.steps:>7d} steps")
    spent, alone = branched_cost(runs)
    print(f"compute: {spent:.3g} FLOPs branched vs {alone:.3g} for the same WSD runs trained "
          f"alone ({alone / spent:.2f}x less)")  # fmt: skip
    root = f" --root {args.root}" if args.root else ""
    print(
        f"wrote {args.output} ({len(runs)} runs) and {sidecar}; run it: pretrain scaling run "
        f"{args.output}{root}   (or on Slurm, branches after their stable run: pretrain slurm "
        f"sweep {args.output}{root})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from launch.sweep import sweep_root
    from pretrain.scaling_laws.plan import read_sweep
    from pretrain.scaling_laws.runner import LOCAL_OVERRIDES, run_sweep

    logging.basicConfig(level=logging.INFO, format="[pretrain] %(message)s")
    sweep = read_sweep(args.sweep)
    root = sweep_root(args.sweep, args.root)
    outcomes = run_sweep(sweep, root, [*LOCAL_OVERRIDES, *args.extra], args.threads)
    failed = [o for o in outcomes if o.state == "failed"]
    for o in failed:
        print(f"failed: {o.name}: {o.error}", file=sys.stderr)
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} runs completed")
    return 1 if failed else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from launch.sweep import run_dir, sweep_root
    from pretrain.scaling_laws.collect import collect
    from pretrain.scaling_laws.plan import read_sweep
    from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, write_csv

    dirs = list(args.run_dirs)
    if args.sweep:
        root = sweep_root(args.sweep, args.root)
        dirs += [str(run_dir(root, run["name"])) for run in read_sweep(args.sweep)["runs"]]
    if not dirs:
        raise ScalingDataError("give run directories or --sweep")
    got = collect(dirs, args.smooth, args.include_incomplete)
    for d, why in got.skipped:
        print(f"skipped {d}: {why}", file=sys.stderr)
    if not got.runs:
        raise ScalingDataError("no completed runs to collect")
    write_csv(args.output, got.runs, RUN_COLUMNS)
    msg = f"wrote {args.output} ({len(got.runs)} runs"
    if args.curves:
        write_csv(args.curves, got.curves, CURVE_COLUMNS)
        msg += f"; {args.curves}: {len(got.curves)} evaluations"
    print(msg + ")")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from pretrain.scaling_laws.study import fit_and_report, summary
    from pretrain.scaling_laws.table import RunTable, read_curves, read_runs

    table = read_runs(args.runs)
    stable = [r for r in table.rows if r.get("role") == "stable"]
    if stable:  # a branched WSD plan: the unannealed stable runs are not finished runs
        table = RunTable([r for r in table.rows if r.get("role") != "stable"])
        print(f"left out {len(stable)} stable-phase run(s) of branched WSD runs: "
              f"{', '.join(r['name'] for r in stable)}")  # fmt: skip
    curves = read_curves(args.curves) if args.curves else None
    note = next((r.get("flops_note", "") for r in table.rows if r.get("flops_note")), "")
    a = fit_and_report(table, curves, _options(args), Path(args.out), note)
    print("\n".join(summary(a)))
    print(f"wrote {args.out}/report.md, fits.json and figures")
    return 0


def _lam(text: str) -> float | None:
    if text == "fit":
        return None
    try:
        return float(text)
    except ValueError:
        raise ScalingDataError(f"--lam {text!r}: expected a number in [0, 1) or 'fit'") from None


def cmd_fit_curves(args: argparse.Namespace) -> int:
    from pretrain.scaling_laws.bootstrap import default_jobs
    from pretrain.scaling_laws.curve_study import CurveOptions, fit_curves_and_report, summary
    from pretrain.scaling_laws.schedule_curves import parse_schedule, scheduled_curves
    from pretrain.scaling_laws.table import read_runs

    opts = CurveOptions(
        laws=list(dict.fromkeys(args.law)), holdout=list(args.holdout),
        predict=[parse_schedule(t) for t in args.predict], lam=_lam(args.lam),
        min_step=args.min_step, delta=args.delta,
        n_boot=args.boot, level=args.level, seed=args.seed,
        n_jobs=args.jobs or default_jobs(),
        across_sizes=args.across_sizes or bool(args.holdout_size or args.predict_size),
        holdout_sizes=args.holdout_size, predict_sizes=args.predict_size,
        shared_schedule_terms=args.shared_schedule_terms,
    )  # fmt: skip
    curves = scheduled_curves(read_runs(args.runs), args.curves)
    study = fit_curves_and_report(curves, opts, Path(args.out))
    print("\n".join(summary(study, opts)))
    sizes = ", curve_sizes.json and curve_sizes.png" if study.joint else ""
    print(f"wrote {args.out}/curve_report.md, curve_fits.json and curve_fits.png{sizes}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import json

    from pretrain.scaling_laws.bootstrap import default_jobs
    from pretrain.scaling_laws.compare import (
        compare_studies,
        fit_study,
        plot_comparison,
        summary,
    )  # fmt: skip
    from pretrain.scaling_laws.study import _jsonable
    from pretrain.scaling_laws.table import read_runs

    paths = [Path(p) / "runs.csv" if Path(p).is_dir() else Path(p)
             for p in (args.study_a, args.study_b)]  # fmt: skip
    names = args.names or [args.study_a, args.study_b]
    kwargs = dict(delta=args.delta, n_boot=args.boot, level=args.level, n_jobs=args.jobs
                  or default_jobs())  # fmt: skip
    a, b = (fit_study(n, read_runs(p), seed=args.seed + i, **kwargs)
            for i, (n, p) in enumerate(zip(names, paths)))  # fmt: skip
    comp = compare_studies(a, b, list(args.target))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(_jsonable(comp.as_dict()), indent=2) + "\n")
    plot_comparison(comp, out / "compare.png")
    print("\n".join(summary(comp)))
    print(f"wrote {out}/compare.json and compare.png")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from pretrain.scaling_laws.study import run_study, summary

    logging.basicConfig(level=logging.INFO, format="[pretrain] %(message)s")
    a, outcomes = run_study(
        args.base, args.budgets, args.points, Path(args.out), _options(args),
        family=args.family, widths=args.widths, depths=args.depths,
        tokens_per_param=args.tokens_per_param, min_steps=args.min_steps,
        evals_per_run=args.evals, extra=args.extra, threads=args.threads,
    )  # fmt: skip
    done = sum(o.state != "failed" for o in outcomes)
    print(f"{done} of {len(outcomes)} runs completed; results in {args.out}/report.md")
    print("\n".join(summary(a)))
    return 0
