"""`pretrain scaling plan`: an IsoFLOP grid of model shapes x step counts, written as a sweep.

Shapes vary the muP width (and optionally depth) of a base recipe with the head dimension held
fixed, so every run shares the recipe's hyperparameters (muP transfers them across widths).
For each compute budget C, each shape gets steps = round(C / (flops_per_sample x batch)), using
the model's own FLOPs accounting (`pretrain.models.model_stats`; its note on what is counted
goes into the plan table). The `points` shapes whose tokens-per-parameter ratio lies closest
to `tokens_per_param` (log scale) form that budget's IsoFLOP profile, so each profile brackets
the expected optimum. Warmup and evaluation cadence are set per run in proportion to its steps.

Sweep file (YAML), the format `pretrain slurm sweep` submits and `pretrain scaling run` runs:

    base: configs/vit_digits.yaml      # relative to the sweep file's folder, else to the cwd
    runs:
      - name: vit-C1e12-w48-d4
        overrides: {model.width: 48, model.num_heads: 3, model.depth: 4, schedule.steps: 270,
                    schedule.warmup_steps: 14, logging.eval_every_steps: 27,
                    logging.every_steps: 13, run.name: vit-C1e12-w48-d4}

A muP recipe's runs also carry model.mup.base_head_dim, pinned to the base recipe's value
(`mup_pins`), so adding heads keeps the attention scale. Each run is
`pretrain train BASE key=value ...` with its overrides and run.dir = ROOT/NAME,
where ROOT defaults to runs/<sweep file stem> (`launch.sweep.sweep_root`, as in `pretrain slurm
sweep`). This module writes sweep files; `launch.sweep` reads them. The planned
numbers (budget, params, FLOPs per sample, steps, tokens, tokens per parameter) go to a sidecar
CSV next to the sweep (SWEEP.plan.csv).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from launch.sweep import load_sweep
from pretrain.overrides import parse_override
from pretrain.scaling_laws.table import write_csv
from pretrain.scaling_laws.validate import ScalingDataError

StatsFn = Callable[[dict], dict]  # overrides -> model_stats dict


@dataclass(frozen=True)
class Shape:
    width: int
    depth: int
    num_heads: int

    def overrides(self) -> dict:
        return {"model.width": self.width, "model.depth": self.depth,
                "model.num_heads": self.num_heads}  # fmt: skip


@dataclass
class PlannedRun:
    name: str
    budget: float
    shape: Shape
    params: int
    flops_per_sample: int
    tokens_per_sample: int
    steps: int
    overrides: dict
    batch: int  # global batch size (samples per optimizer step)
    after: tuple[str, ...] = ()  # runs that must complete first (a branch's stable run)

    @property
    def samples(self) -> int:
        return self.steps * self.batch

    @property
    def flops(self) -> float:
        return float(self.samples * self.flops_per_sample)

    @property
    def tokens(self) -> int:
        return self.samples * self.tokens_per_sample

    def row(self) -> dict:
        return {
            "name": self.name, "budget": self.budget, "params": self.params,
            "width": self.shape.width, "depth": self.shape.depth,
            "num_heads": self.shape.num_heads, "steps": self.steps, "samples": self.samples,
            "tokens": self.tokens, "flops": self.flops,
            "tokens_per_param": self.tokens / self.params,
            "flops_per_sample": self.flops_per_sample,
        }  # fmt: skip


def candidate_shapes(
    base_width: int, base_heads: int, base_depth: int,
    widths: Sequence[int] | None = None, depths: Sequence[int] | None = None,
) -> list[Shape]:  # fmt: skip
    """Widths (default: 1..16 head dims) x depths (default: the base depth), fixed head dim."""
    if base_width % base_heads:
        raise ScalingDataError(f"base width {base_width} is not divisible by {base_heads} heads")
    head_dim = base_width // base_heads
    widths = list(widths) if widths else [head_dim * k for k in (1, 2, 3, 4, 6, 8, 12, 16)]
    depths = list(depths) if depths else [base_depth]
    bad = [w for w in widths if w <= 0 or w % head_dim]
    if bad:
        raise ScalingDataError(
            f"width(s) {bad} are not positive multiples of the head dimension {head_dim} "
            f"(base width {base_width} / {base_heads} heads)"
        )
    if any(d <= 0 for d in depths):
        raise ScalingDataError(f"depths must be positive, got {list(depths)}")
    return [Shape(w, d, w // head_dim) for d in depths for w in sorted(set(widths))]


def mup_pins(model_cfg) -> dict:
    """Overrides every planned run needs so muP transfers across the plan's shapes.

    The plan holds head_dim fixed and raises num_heads, while model.mup.base_head_dim defaults
    to base_width // the *current* head count: unpinned, the attention scale would shrink with
    every added head. Pinned to the base recipe's value, every run has the base model's scale.
    """
    from pretrain.models.parametrization import base_head_dim

    if not model_cfg.mup.enabled:
        return {}
    return {"model.mup.base_head_dim": base_head_dim(model_cfg)}


def _compact(x: float) -> str:
    mant, exp = f"{x:.1e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def plan_isoflop(
    budgets: Sequence[float],
    points: int,
    shapes: list[Shape],
    stats_fn: StatsFn,
    global_batch_size: int,
    *,
    base_steps: int = 1000,
    base_warmup: int = 0,
    tokens_per_param: float = 20.0,
    min_steps: int = 20,
    evals_per_run: int = 10,
    family: str = "model",
) -> list[PlannedRun]:
    """The IsoFLOP grid: `points` shapes per budget around the target tokens-per-parameter."""
    budgets = sorted(float(b) for b in budgets)
    if len(budgets) < 2:
        raise ScalingDataError(
            f"need at least 2 compute budgets for a power law, got {len(budgets)}"
        )
    if any(not np.isfinite(b) or b <= 0 for b in budgets):
        raise ScalingDataError(f"budgets must be positive finite FLOPs, got {budgets}")
    if points < 3:
        raise ScalingDataError(f"need at least 3 points per budget for a parabola, got {points}")
    if len(shapes) < points:
        raise ScalingDataError(
            f"{len(shapes)} candidate shapes cannot give {points} points per budget"
        )
    stats = {s: stats_fn(s.overrides()) for s in shapes}
    warm_frac = base_warmup / base_steps if base_steps else 0.0
    runs: list[PlannedRun] = []
    for C in budgets:
        feasible = []
        for s in shapes:
            st = stats[s]
            steps = int(round(C / (st["flops_per_sample"] * global_batch_size)))
            if steps < min_steps:
                continue
            tokens = steps * global_batch_size * st["tokens_per_sample"]
            feasible.append((abs(np.log(tokens / st["params"] / tokens_per_param)), s, steps))
        if len(feasible) < points:
            raise ScalingDataError(
                f"degenerate grid at budget C={C:.3g}: only {len(feasible)} shape(s) reach "
                f"{min_steps} steps (need {points}); raise the budget, add smaller widths, or "
                f"lower --min-steps"
            )
        feasible.sort(key=lambda t: t[0])
        for _, s, steps in sorted(feasible[:points], key=lambda t: stats[t[1]]["params"]):
            st = stats[s]
            name = f"{family}-C{_compact(C)}-w{s.width}-d{s.depth}"
            overrides = {
                **s.overrides(),
                "schedule.steps": steps,
                "schedule.warmup_steps": max(1, int(round(warm_frac * steps))) if warm_frac else 0,
                "logging.eval_every_steps": max(1, steps // evals_per_run),
                "logging.every_steps": max(1, steps // (2 * evals_per_run)),
                "run.name": name,
            }
            runs.append(PlannedRun(name, C, s, int(st["params"]), int(st["flops_per_sample"]),
                                   int(st["tokens_per_sample"]), steps, overrides,
                                   global_batch_size))  # fmt: skip
    return runs


def parse_sets(texts: Sequence[str]) -> dict:
    """`key=value` strings as a dict of overrides, read by the trainer's own parser."""
    try:
        return dict(parse_override(text) for text in texts)
    except ValueError as e:
        raise ScalingDataError(str(e)) from None


def write_sweep(path: str | Path, base: str, runs: list[PlannedRun]) -> Path:
    """Write the sweep YAML and its sidecar plan table (PATH with suffix .plan.csv)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"base": str(base), "runs": [
        {"name": r.name, "overrides": r.overrides, **({"after": list(r.after)} if r.after else {})}
        for r in runs]}  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sidecar = path.with_suffix(".plan.csv")
    write_csv(sidecar, [r.row() for r in runs], list(runs[0].row()) if runs else ["name"])
    return sidecar


def read_sweep(path: str | Path) -> dict:
    """The sweep as the mapping `run_sweep` takes: {base: str, runs: [{name, overrides, after}]}.

    Reading and checking (names, keys, a base relative to the sweep's folder) are
    `launch.sweep.load_sweep`'s, the one reader of the format; its errors come back as
    ScalingDataError naming the file.
    """
    try:
        sweep = load_sweep(path)
    except ValueError as e:
        raise ScalingDataError(f"{path}: {e}") from None
    runs = [{"name": run.name, "overrides": dict(run.overrides), "after": list(run.after)}
            for run in sweep.runs]  # fmt: skip
    return {"base": str(sweep.base), "runs": runs}


def model_stats_fn(base_recipe: str | Path, extra: Sequence[str] = ()) -> StatsFn:
    """Stats of the base recipe with shape overrides, from the models' own accounting."""
    from pretrain.config import load_config
    from pretrain.models import model_stats

    def stats(overrides: dict) -> dict:
        cfg = load_config(base_recipe, [*extra, *(f"{k}={v}" for k, v in overrides.items())])
        return model_stats(cfg.model)

    return stats
