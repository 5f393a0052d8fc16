"""`pretrain mup coord-check`, `transfer` and `sv-compare`: muP checks on any recipe.

coord-check and transfer train width variants of the recipe through the real engine (the
recipe's parallel.backend; under torchrun the ranks share each run), in SP and in muP
(model.mup.base_width from the recipe). With --depths they sweep depth at one width instead, muP
with and without the depth rule (depth-mup: α = 1/2, completep: α = 1; base depth: the recipe's
model.mup.base_depth, else its depth). --heads scale grows the head count with width and keeps
the recipe's head dim, as `pretrain scaling plan` does.
Files are written by rank 0. sv-compare reads two finished runs' logged singular values.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

EPILOG = """\
examples:
  pretrain mup coord-check configs/mup_vit_digits.yaml --widths 32 64 128 256 512 --seeds 3 \\
      --out runs/coord
  pretrain mup transfer configs/mup_vit_digits.yaml --widths 32 64 128 256 --steps 100 \\
      --lr-min 2.44140625e-4 --lr-max 0.0625 --seeds 2 --out runs/transfer
  pretrain mup sv-compare runs/w32 runs/w512 --out runs/sv
`pretrain mup SUBCOMMAND --help` shows more: depth sweeps, several processes, report-only.
"""

COORD_CHECK_EPILOG = """\
examples:
  pretrain mup coord-check configs/mup_vit_digits.yaml --widths 32 64 128 256 512 --seeds 3 \\
      --out runs/coord
  pretrain mup coord-check configs/mup_lm_bytes.yaml --widths 64 --depths 2 4 8 16 --steps 6 \\
      --seeds 2 --parametrizations mup depth-mup completep --out runs/coord_depth
Under torchrun the ranks share each run (the recipe's parallel.backend, or an override):
  torchrun --nproc_per_node 2 -m pretrain mup coord-check configs/mup_dit_digits.yaml \\
      parallel.backend=fsdp2 --out runs/coord2
"""

TRANSFER_EPILOG = """\
examples:
  pretrain mup transfer configs/mup_vit_digits.yaml --widths 32 64 128 256 --steps 100 \\
      --lr-min 2.44140625e-4 --lr-max 0.0625 --seeds 2 --out runs/transfer
  pretrain mup transfer configs/mup_lm_bytes.yaml --widths 32 --depths 2 4 8 --steps 100 \\
      --lr-min 0.001953125 --lr-max 0.0625 --metric val_loss \\
      --parametrizations mup completep --out runs/transfer_depth   # across depth, at width 32
  pretrain mup transfer configs/mup_vit_translated.yaml --widths 32 64 128 256 512 \\
      --heads scale --steps 300 --seeds 3 --lr-factor 1.4142135623730951 \\
      --lr-min 9.765625e-4 --lr-max 0.011048543456039806 --out runs/transfer_heads
  pretrain mup transfer configs/mup_vit_digits.yaml --widths 32 64 128 256 --steps 100 \\
      --out runs/transfer --report-only   # re-read runs/transfer/transfer.csv, train nothing
"""

SV_COMPARE_EPILOG = """\
examples:
  pretrain mup sv-compare runs/w32 runs/w512 --out runs/sv
  pretrain mup sv-compare runs/w32 runs/w512 --step 50   # at one logged step, table only
Both runs log singular values, e.g. runs/w512 (and runs/w32 likewise, model.width=32) from:
  pretrain train configs/mup_vit_digits.yaml model.width=512 \\
      model.mup.log_singular_values=true run.name=w512
"""

# pretrain.mup.runner.PARAMETRIZATIONS (not imported here: `pretrain --help` stays light)
PARAMETRIZATIONS = ["sp", "mup", "depth-mup", "completep"]
HEAD_RULES = ["fixed", "scale"]  # pretrain.mup.runner.HEAD_RULES


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe, e.g. configs/vit_digits.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument(
        "--depths", type=int, nargs="+",
        help="sweep depth (at the one width given by --widths) instead of width",
    )  # fmt: skip
    p.add_argument(
        "--heads", choices=HEAD_RULES, default="fixed",
        help="fixed: the recipe's num_heads at every width (head dim grows); scale: the "
        "recipe's head dim at every width (heads grow, as `pretrain scaling plan` does)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=5)
    p.add_argument(
        "--seeds", type=int, default=1, help="independent inits (and data orders) averaged"
    )
    p.add_argument(
        "--parametrizations", nargs="+", default=["sp", "mup"], choices=PARAMETRIZATIONS,
        help="mup: width rules only; depth-mup / completep: with the depth rule, α = 1/2 / 1",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output directory (CSV, PNG, JSON)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "mup",
        help="muP coordinate checks and LR-transfer sweeps",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="mup_command", metavar="SUBCOMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    cc = sub.add_parser(
        "coord-check", help="mean |activation| per layer per step across widths, SP vs muP",
        epilog=COORD_CHECK_EPILOG, formatter_class=raw,
    )
    _common(cc)
    cc.add_argument(
        "--tolerance", type=float, default=0.1, help="max |slope| of log mean|act| vs log width"
    )
    cc.add_argument(
        "--skip-steps", type=int, default=2,
        help="first steps the verdict does not read (it averages the slope over the rest)",
    )  # fmt: skip
    cc.set_defaults(func=coord_check)
    sv = sub.add_parser(
        "sv-compare", help="two runs' top singular values per matrix and their ratio (Fan et al.)",
        epilog=SV_COMPARE_EPILOG, formatter_class=raw,
    )
    sv.add_argument("run_a", type=Path, help="run directory (the proxy, e.g. the base width)")
    sv.add_argument("run_b", type=Path, help="run directory compared with it (e.g. wider)")
    sv.add_argument("--step", type=int, help="the logged step to compare (default: each last)")
    sv.add_argument("--out", type=Path, help="write sv_compare.csv and sv_compare.png here")
    sv.set_defaults(func=sv_compare)
    tr = sub.add_parser(
        "transfer", help="LR sweep over widths, SP vs muP; optimum per width",
        epilog=TRANSFER_EPILOG, formatter_class=raw,
    )
    _common(tr)
    tr.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        help="explicit LR grid (else --lr-min..--lr-max by --lr-factor)",
    )
    tr.add_argument("--lr-min", type=float, default=1.25e-4)
    tr.add_argument("--lr-max", type=float, default=3.2e-2)
    tr.add_argument("--lr-factor", type=float, default=2.0)
    tr.add_argument("--metric", default="train_loss", choices=["train_loss", "val_loss"])
    tr.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: re-read --out/transfer.csv (e.g. shards of one sweep, run in "
        "parallel and concatenated) and rewrite the PNG, JSON and report",
    )
    tr.set_defaults(func=transfer)


def _load(args: argparse.Namespace):
    import logging

    from pretrain.config import load_config

    cfg = load_config(args.recipe, args.overrides)  # a bad recipe: one line (pretrain/cli)
    logging.basicConfig(level=logging.INFO, format="[pretrain] %(message)s")  # progress lines
    return cfg


def _bases(cfg, args: argparse.Namespace) -> str:
    """The base shape a plot's title names: base width (and the head dim kept when heads grow),
    and base depth in a depth sweep."""
    head_dim = cfg.model.width // cfg.model.num_heads
    heads = f", head dim {head_dim}" if args.heads == "scale" else ""
    if not args.depths:
        return f"base width {cfg.model.mup.base_width}{heads}"
    base_depth = cfg.model.mup.base_depth or cfg.model.depth
    return f"width {args.widths[0]}, base depth {base_depth}{heads}"


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def coord_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from pretrain.dist import barrier, shutdown
    from pretrain.mup.coord_check import format_verdict, run_coord_check, verdict, write_csv
    from pretrain.mup.plots import plot_coord_check

    try:
        progress = (lambda line: print(line, file=sys.stderr, flush=True)) if _is_main() else None
        records = run_coord_check(
            cfg, args.widths, args.steps, args.seeds, tuple(args.parametrizations), progress,
            args.depths, args.heads,
        )  # fmt: skip
        if _is_main():
            args.out.mkdir(parents=True, exist_ok=True)
            write_csv(records, args.out / "coord_check.csv")
            results = verdict(records, args.tolerance, args.skip_steps)
            plot_coord_check(
                records,
                args.out / "coord_check.png",
                title=f"{cfg.model.family}: coordinate check, {_bases(cfg, args)}",
            )
            summary = {
                f"{v.parametrization}/{v.layer}": {
                    "slope": v.slope, "ok": v.ok, "steps": list(v.steps), "one_sided": v.one_sided
                } for v in results
            }  # fmt: skip
            (args.out / "verdict.json").write_text(json.dumps(summary, indent=2))
            print(format_verdict(results, args.tolerance))
            print(
                f"wrote {args.out / 'coord_check.csv'}, {args.out / 'coord_check.png'}, "
                f"{args.out / 'verdict.json'}"
            )
        barrier()  # no rank tears the group down while rank 0 still writes
    finally:
        shutdown()
    return 0


def sv_compare(args: argparse.Namespace) -> int:
    from pretrain.mup.plots import plot_sv_ratios
    from pretrain.mup.sv_compare import compare, format_table, read_run, write_csv

    a, b = read_run(args.run_a, args.step), read_run(args.run_b, args.step)
    rows = compare(a, b)  # an SvCompareError: one line (pretrain.cli)
    print(format_table(rows, a, b))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, args.out / "sv_compare.csv")
        plot_sv_ratios(rows, args.out / "sv_compare.png",
                       title=f"σ_max: width {b.width} / width {a.width}")  # fmt: skip
        print(f"wrote {args.out / 'sv_compare.csv'}, {args.out / 'sv_compare.png'}")
    return 0


def transfer(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from pretrain.dist import barrier, shutdown
    from pretrain.mup.plots import plot_transfer
    from pretrain.mup.transfer import (
        for_heads,
        format_report,
        loss_at_base_optimum,
        lr_grid,
        optima,
        optimum_shift,
        read_rows,
        run_transfer,
        seed_shifts,
    )

    lrs = args.lrs or lr_grid(args.lr_min, args.lr_max, args.lr_factor)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.report_only:
            rows = read_rows(args.out / "transfer.csv", cfg.model.depth, cfg.model.num_heads)
            rows = [r for r in for_heads(rows, cfg, args.heads)
                    if r["parametrization"] in args.parametrizations]
        else:
            rows = run_transfer(
                cfg,
                args.widths,
                lrs,
                args.steps,
                args.out / "transfer.csv",
                args.seeds,
                tuple(args.parametrizations),
                depths=args.depths,
                heads=args.heads,
            )
        rows = [r for r in rows if r["width"] in args.widths and r["steps"] == args.steps
                and (not args.depths or r["depth"] in args.depths)]  # fmt: skip
        if not rows:
            raise ValueError(f"{args.out / 'transfer.csv'}: no rows for these widths and steps")
        if _is_main():
            plot_transfer(
                rows,
                args.out / "transfer.png",
                args.metric,
                title=f"{cfg.model.family}: LR transfer, {args.steps} steps, "
                f"{_bases(cfg, args)}",
            )
            best = optima(rows, args.metric)
            summary = {
                "optimum_lr": {f"{p}/{w}": lr for (p, w), lr in best.items()},
                "shift_grid_steps": optimum_shift(rows, args.lr_factor, args.metric),
                "shift_grid_steps_per_seed": seed_shifts(rows, args.lr_factor, args.metric),
                "loss_at_base_optimum": {
                    f"{p}/{w}": x if math.isfinite(x) else None
                    for (p, w), x in loss_at_base_optimum(rows, args.metric).items()
                },
            }
            (args.out / "transfer.json").write_text(json.dumps(summary, indent=2))
            print(format_report(rows, args.lr_factor, args.metric))
            print(
                f"wrote {args.out / 'transfer.csv'}, {args.out / 'transfer.png'}, "
                f"{args.out / 'transfer.json'}"
            )
        barrier()  # no rank tears the group down while rank 0 still writes
    finally:
        shutdown()
    return 0
