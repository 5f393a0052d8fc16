"""`pretrain slurm submit|sweep`: turn a recipe (or a sweep of recipes) into Slurm jobs.

Each run's config, resolved at submission (recipe + overrides + defaults, validated by the
trainer's schema), is saved as RUN/recipe.yaml and the job trains from that copy, so a requeued
job trains what was submitted even if the recipe or a default changes meanwhile. The recipe's
`slurm` section sets resources; flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from launch.recipe import apply_overrides, dump_recipe, get_dotted, load_recipe, parse_override
from launch.slurm import (
    JobSpec,
    SlurmConfig,
    active_job,
    mesh_for_nodes,
    render_sbatch,
    submit,
    wait_for,
)
from launch.sweep import load_sweep, sweep_root, upstream_jobs
from launch.sweep import run_dir as sweep_run_dir

# flag -> SlurmConfig field, for flags that replace a field of the recipe's `slurm` section.
_FLAGS: list[tuple[str, type, str, str]] = [
    ("--nodes", int, "N", "number of nodes (one srun task and one torchrun per node)"),
    ("--gpus-per-node", int, "G", "GPUs per node; also the default processes per node"),
    ("--nproc-per-node", int, "P", "processes per node (default: GPUs per node, or 1)"),
    ("--cpus-per-task", int, "C", "CPUs per node for the node's task"),
    ("--time", str, "T", "time limit, e.g. 04:00:00 or 2-00:00:00"),
    ("--partition", str, "NAME", "Slurm partition"),
    ("--account", str, "NAME", "Slurm account"),
    ("--qos", str, "NAME", "Slurm QOS"),
    ("--job-name", str, "NAME", "job name (default: the run directory's name)"),
    ("--signal", str, "SIG", "warning signal: USR1 (default) or TERM"),
    ("--signal-seconds", int, "S", "send the warning signal this long before the limit (0: none)"),
    ("--max-restarts", int, "R", "requeue at most this many times (default 3)"),
    ("--rdzv-port", int, "PORT", "rendezvous port (default: 20000 + job id %% 10000)"),
]


SUBMIT_EPILOG = """\
examples:
  pretrain slurm submit configs/lm_gpt2_small.yaml run.dir=runs/gpt2 --nodes 4 \\
      --gpus-per-node 8 --time 24:00:00 --partition gpu
  pretrain slurm submit configs/vit_digits.yaml run.dir=runs/vit --nodes 2 --dry-run   # print it
  pretrain slurm submit configs/vit_b16_224.yaml optim.lr=3e-3 run.dir=runs/vit_b16 --nodes 2 \\
      --gpus-per-node 8 --sbatch constraint=a100 --env NCCL_DEBUG=WARN --max-restarts 10
"""

SWEEP_EPILOG = """\
examples:
  pretrain slurm sweep configs/sweep_example.yaml --root runs/sweep --dry-run   # print the jobs
  pretrain slurm sweep configs/sweep_example.yaml --root runs/sweep --partition gpu \\
      --gpus-per-node 1 --time 02:00:00
  pretrain slurm sweep configs/sweep_example.yaml --root runs/sweep --only w64-lr0.002 \\
      --only w64-lr0.004 --time 04:00:00   # just these runs (names: see --dry-run)
"""


def _add_slurm_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Slurm resources (override the recipe's slurm section)")
    for flag, kind, metavar, help_text in _FLAGS:
        group.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)
    group.add_argument("--sbatch", action="append", default=[], metavar="OPT[=VALUE]",
                       help="extra sbatch option, e.g. --sbatch constraint=a100 "
                            "(repeatable)")  # fmt: skip
    group.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="environment variable for the job (repeatable)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script(s) instead of submitting")  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="submit even if a job of the same run directory is still "
                             "active")  # fmt: skip


def _pairs(items: list[str], flag: str, allow_bare: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and not allow_bare:
            raise SystemExit(f"{flag} {item!r}: expected NAME=VALUE")
        out[key] = value if sep else None
    return out


def slurm_config(recipe: dict, args: argparse.Namespace) -> SlurmConfig:
    """The recipe's `slurm` section with the command-line flags applied, validated."""
    cfg = SlurmConfig.from_dict(recipe.get("slurm"))
    changes = {}
    for flag, *_ in _FLAGS:
        name = flag[2:].replace("-", "_")
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    changes["sbatch"] = {**cfg.sbatch, **_pairs(args.sbatch, "--sbatch", allow_bare=True)}
    changes["env"] = {**cfg.env, **_pairs(args.env, "--env", allow_bare=False)}
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return cfg


def resolve(recipe: dict, cfg: SlurmConfig) -> dict:
    """The trainer's config for `recipe`, every default filled in and validated now, before the
    job waits in the queue (a typo fails here, naming the key, not hours later on the cluster)."""
    from pretrain.config import config_from_dict, to_dict

    return to_dict(config_from_dict({**recipe, "slurm": dataclasses.asdict(cfg)}))


def prepare(recipe: dict, run_dir: Path, args: argparse.Namespace) -> tuple[JobSpec, dict]:
    """The job of one run and the resolved config it trains (`run.dir` = the run directory)."""
    run_dir = run_dir.expanduser().resolve()
    recipe = apply_overrides(recipe, {"run.dir": str(run_dir)})
    cfg = slurm_config(recipe, args)
    mesh = mesh_for_nodes(recipe, cfg)  # nodes -> dp_replicate, shown on the torchrun line
    recipe = apply_overrides(recipe, mesh)
    resolved = resolve(recipe, cfg)
    spec = JobSpec(run_dir=run_dir, recipe=run_dir / "recipe.yaml", slurm=cfg,
                   overrides=[f"{key}={value}" for key, value in mesh.items()])
    render_sbatch(spec)  # validate everything before anything is written
    return spec, resolved


def refuse_active(specs: list[JobSpec], args: argparse.Namespace) -> None:
    """Stop before writing anything if a run directory still has a queued or running job:
    two jobs on one run directory would corrupt its checkpoints."""
    if args.dry_run or args.force:
        return
    busy = [f"{spec.run_dir} (job {job})" for spec in specs if (job := active_job(spec.run_dir))]
    if busy:
        raise SystemExit("still active, not submitting (use --force): " + ", ".join(busy))


def launch(spec: JobSpec, recipe: dict, args: argparse.Namespace) -> str:
    """Submit (or with --dry-run print) the job; returns its id ("" for a dry run)."""
    if args.dry_run:
        print(render_sbatch(spec))
        return ""
    dump_recipe(recipe, spec.recipe)
    try:
        job_id = submit(spec, force=True)  # refuse_active has checked
    except RuntimeError as e:
        raise SystemExit(str(e)) from None  # sbatch refused: one error line (pretrain/cli)
    print(f"submitted job {job_id}: {spec.run_dir} (log {spec.run_dir}/slurm/{job_id}.out)")
    return job_id


def cmd_submit(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    recipe = apply_overrides(recipe, dict(parse_override(text) for text in args.overrides))
    # The trainer's default: runs/<run.name> under the working directory.
    run_dir = (
        args.run_dir
        or get_dotted(recipe, "run.dir")
        or f"runs/{get_dotted(recipe, 'run.name') or 'run'}"
    )
    spec, recipe = prepare(recipe, Path(run_dir), args)  # ValueError: one line (pretrain/cli)
    refuse_active([spec], args)
    launch(spec, recipe, args)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep)  # ValueError: one line (pretrain/cli)
    base = load_recipe(sweep.base)
    root = sweep_root(args.sweep, args.root)
    runs = [run for run in sweep.runs if not args.only or run.name in args.only]
    missing = sorted(set(args.only or []) - {run.name for run in sweep.runs})
    if missing:
        raise ValueError(f"--only names no run of the sweep: {', '.join(missing)}")
    jobs = [prepare(apply_overrides(base, run.overrides), sweep_run_dir(root, run.name), args)
            for run in runs]  # fmt: skip
    refuse_active([spec for spec, _ in jobs], args)
    # runs with `after` start once those completed (a decay branch after its stable run)
    submitting = {run.name for run in runs}
    upstream = {run.name: upstream_jobs(run, root, submitting) for run in runs}  # before sbatch
    submitted: dict[str, str] = {}
    for run, (spec, recipe) in zip(runs, jobs):
        now = [name for name in run.after if name in submitting]
        if args.dry_run:
            print(f"# ---- {spec.run_dir}" + (f" (after {', '.join(now)})" if now else ""))
        wait_for(spec, [*upstream[run.name], *filter(None, (submitted[name] for name in now))])
        submitted[run.name] = launch(spec, recipe, args)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slurm",
        help="submit runs and sweeps to Slurm",
        description="Submit recipes to Slurm as jobs that checkpoint on a warning signal or "
        "SIGTERM, requeue themselves and resume from the latest checkpoint.",
    )
    sub = parser.add_subparsers(dest="slurm_command", metavar="COMMAND")

    p = sub.add_parser(
        "submit",
        help="submit one recipe as a (multi-node) job",
        description="Render an sbatch script for RECIPE into RUN/slurm/job.sbatch and submit "
        "it. One srun task per node\nstarts torchrun with a c10d rendezvous on the first node. "
        "The job requeues itself after preemption\nor its time limit until --max-restarts.",
        epilog=SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="YAML recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted recipe overrides, e.g. optim.lr=3e-4")  # fmt: skip
    p.add_argument("--run-dir", help="run directory (default: the recipe's run.dir)")
    _add_slurm_flags(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "sweep",
        help="submit every run of a sweep file, one job each",
        description="Expand SWEEP (base recipe, named runs, optional grid) and submit one job "
        "per run into ROOT/NAME,\neach with its own merged recipe. Flags apply to every run.",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweep", help="sweep YAML: {base: RECIPE, runs: [...], grid: {...}}")
    p.add_argument("--root", help="directory holding the runs (default: runs/<sweep name>)")
    p.add_argument("--only", action="append", metavar="NAME", help="submit only these runs")
    _add_slurm_flags(p)
    p.set_defaults(func=cmd_sweep)
