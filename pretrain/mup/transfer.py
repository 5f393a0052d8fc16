"""Learning-rate transfer: sweep the LR at several widths, in SP and in muP, and compare optima.

Under muP the LR that minimises the loss should not move with width (TP5 Fig. 1); under SP it
drifts (smaller at larger width with Adam). Every (parametrization, width, lr, seed) is one short
training run through the real engine on the recipe's data and schedule; the loss is the mean
training loss over the last `tail` steps (the metric of TP5's transfer plots), the validation
loss is recorded too. Rows are appended to the CSV as runs finish, so an interrupted sweep resumes.

With `depths` (at one width) the sweep is across depth instead: with muP's width rules alone the
optimum drifts with depth (each block's update is Θ(lr) and there are more of them), under
CompleteP / depth-muP it should not (Dey et al. 2025, Fig. 1).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from pretrain.config import TrainConfig
from pretrain.mup.runner import (
    build,
    num_heads_at,
    setup,
    sizes,
    sweep_axis,
    train_steps,
    variant,
)
from pretrain.step import evaluate

log = logging.getLogger(__name__)

FIELDS = ["parametrization", "width", "depth", "num_heads", "lr", "seed", "steps", "train_loss",
          "val_loss"]


def lr_grid(lr_min: float, lr_max: float, factor: float = 2.0) -> list[float]:
    """lr_min, lr_min*factor, ... up to lr_max (inclusive within rounding)."""
    n = int(math.floor(math.log(lr_max / lr_min) / math.log(factor) + 1e-9)) + 1
    return [lr_min * factor**i for i in range(n)]


def read_rows(path: Path, default_depth: int = 0, default_heads: int = 0) -> list[dict]:
    """The rows of a sweep CSV; files written before depth sweeps (head rules) get
    `default_depth` (`default_heads`: the recipe's count, the one rule there was).
    A row that does not parse is refused naming the file and its line."""
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):  # line 1 is the header
            try:
                rows.append({
                    "parametrization": r["parametrization"],
                    "width": int(r["width"]),
                    "depth": int(r.get("depth") or default_depth),
                    "num_heads": int(r.get("num_heads") or default_heads),
                    "lr": float(r["lr"]),
                    "seed": int(r["seed"]),
                    "steps": int(r["steps"]),
                    "train_loss": float(r["train_loss"]),
                    "val_loss": float(r["val_loss"]),
                })  # fmt: skip
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}: line {line}: not a transfer row ({e!r})") from None
    return rows


def _key(r: dict) -> tuple:
    return (
        r["parametrization"],
        int(r["width"]),
        int(r["depth"]),
        int(r["num_heads"]),
        f"{float(r['lr']):.6g}",
        int(r["seed"]),
        int(r["steps"]),
    )


def run_transfer(
    cfg: TrainConfig,
    widths: list[int],
    lrs: list[float],
    steps: int,
    csv_path: Path | None,
    seeds: int = 1,
    parametrizations: tuple[str, ...] = ("sp", "mup"),
    tail: int = 0,
    depths: list[int] | None = None,
    heads: str = "fixed",
) -> list[dict]:
    """Train every (parametrization, width, lr, seed) for `steps` steps; returns the rows of
    this head rule. `depths`: sweep depth at the one width in `widths` instead of width."""
    points = sizes(cfg, widths, depths)
    env = setup(cfg)
    tail = tail or max(steps // 10, 1)
    rows = [] if csv_path is None else read_rows(csv_path, cfg.model.depth, cfg.model.num_heads)
    done = {_key(r) for r in rows}
    if csv_path is not None and env.is_main and (not csv_path.exists() or _old_header(csv_path)):
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:  # new, or rewritten with the depth column
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    total, started = len(parametrizations) * len(points) * len(lrs) * seeds, 0
    for param in parametrizations:
        for width, depth in points:
            for lr in lrs:
                for seed in range(seeds):
                    started += 1
                    row = {
                        "parametrization": param,
                        "width": width,
                        "depth": depth,
                        "num_heads": num_heads_at(cfg, width, heads),
                        "lr": lr,
                        "seed": seed,
                        "steps": steps,
                    }
                    if _key(row) in done:
                        continue
                    if env.is_main:  # minutes per run on a CPU: say what is running
                        size = f"width={width}" + (f" depth={depth}" if depths else "")
                        log.info("transfer %d/%d: %s %s lr=%.3g seed=%d (%d steps)",
                                 started, total, param, size, lr, seed, steps)
                    vcfg = variant(cfg, width, param, lr=lr, depth=depth, heads=heads)
                    vcfg.data.seed = cfg.data.seed + seed
                    vcfg.schedule.steps = steps
                    engine = build(vcfg, env, cfg.run.seed + seed)
                    losses = train_steps(vcfg, env, engine, steps)
                    finite = len(losses) == steps and all(math.isfinite(x) for x in losses[-tail:])
                    row["train_loss"] = float(np.mean(losses[-tail:])) if finite else float("nan")
                    row["val_loss"] = _val_loss(engine, vcfg, env) if finite else float("nan")
                    engine.close()
                    rows.append(row)
                    if csv_path is not None and env.is_main:
                        with open(csv_path, "a", newline="") as f:
                            csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
    return for_heads(rows, cfg, heads)


def for_heads(rows: list[dict], cfg: TrainConfig, heads: str) -> list[dict]:
    """The rows run under the head rule `heads` (one CSV may hold sweeps of both rules; a width
    the rule cannot make, e.g. not a multiple of the head dim, is another rule's)."""

    def under_rule(r: dict) -> bool:
        try:
            return r["num_heads"] == num_heads_at(cfg, r["width"], heads)
        except ValueError:
            return False

    return [r for r in rows if under_rule(r)]


def _old_header(path: Path) -> bool:
    with open(path, newline="") as f:
        return next(csv.reader(f), FIELDS) != FIELDS


def _val_loss(engine, cfg: TrainConfig, env) -> float:
    from data_pipeline import build_loader

    dp_rank, dp_size = engine.layout.dp_rank, engine.layout.dp_size  # TP ranks share a batch
    return evaluate(engine, build_loader(cfg.data, dp_rank, dp_size, "val"), 0)["loss"]


def curves(
    rows: list[dict], metric: str = "train_loss"
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(parametrization, size) -> [(lr, loss averaged over seeds; nan if any seed diverged)];
    size is the swept axis (`runner.sweep_axis`): the width, or the depth."""
    axis = sweep_axis(rows)
    acc: dict[tuple[str, int, float], list[float]] = {}
    for r in rows:
        acc.setdefault((r["parametrization"], r[axis], r["lr"]), []).append(r[metric])
    out: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for (p, w, lr), losses in sorted(acc.items()):
        out.setdefault((p, w), []).append((lr, float(np.mean(losses))))
    return out


def optima(rows: list[dict], metric: str = "train_loss") -> dict[tuple[str, int], float]:
    """(parametrization, size) -> the grid LR with the lowest loss (diverged runs never win)."""
    best = {}
    for key, pts in curves(rows, metric).items():
        finite = [(loss, lr) for lr, loss in pts if math.isfinite(loss)]
        if finite:
            best[key] = min(finite)[1]
    return best


def at_grid_edge(rows: list[dict], metric: str = "train_loss") -> set[tuple[str, int]]:
    """(parametrization, size) whose optimum is the smallest or largest LR swept there: its
    true optimum may lie beyond the grid, so the shift read from it is only a bound."""
    best, per_size = optima(rows, metric), curves(rows, metric)
    return {key for key, lr in best.items()
            if len(per_size[key]) > 1 and lr in (per_size[key][0][0], per_size[key][-1][0])}


def optimum_shift(
    rows: list[dict], factor: float = 2.0, metric: str = "train_loss"
) -> dict[str, float]:
    """Per parametrization: largest minus smallest optimum lr over the sizes, in grid steps.

    That is log_factor(largest / smallest)."""
    best = optima(rows, metric)
    out = {}
    for param in dict.fromkeys(p for p, _ in best):
        lrs = [lr for (p, _), lr in best.items() if p == param]
        out[param] = math.log(max(lrs) / min(lrs)) / math.log(factor)
    return out


def seed_shifts(
    rows: list[dict], factor: float = 2.0, metric: str = "train_loss"
) -> dict[str, list[float]]:
    """Per parametrization: each seed's own optimum shift across the sizes, in grid steps.

    The mean curve can hide a seed whose optimum wanders (or average two that wander apart);
    the median of these is the issue's "moves at most one grid step (median over seeds)"."""
    by_seed: dict[int, list[dict]] = {}
    for r in rows:
        by_seed.setdefault(int(r["seed"]), []).append(r)
    out: dict[str, list[float]] = {}
    for seed in sorted(by_seed):
        for param, shift in optimum_shift(by_seed[seed], factor, metric).items():
            out.setdefault(param, []).append(shift)
    return out


def loss_at_base_optimum(
    rows: list[dict], metric: str = "train_loss"
) -> dict[tuple[str, int], float]:
    """(parametrization, size) -> the seed-mean loss at the smallest size's optimum LR.

    That is the LR a user would transfer from the proxy; under muP the loss there should fall
    with width ("wider is better at the transferred LR"). nan where that LR was not run, or
    where every run at the smallest size diverged (no optimum to transfer)."""
    best, per_size, out = optima(rows, metric), curves(rows, metric), {}
    for (param, size), pts in per_size.items():
        lr = best.get((param, min(s for p, s in per_size if p == param)))
        out[(param, size)] = next(
            (loss for x, loss in pts if lr is not None and math.isclose(x, lr)), math.nan
        )
    return out


def format_report(rows: list[dict], factor: float = 2.0, metric: str = "train_loss") -> str:
    best = optima(rows, metric)
    shift = optimum_shift(rows, factor, metric)
    per_seed = seed_shifts(rows, factor, metric)
    at_base = loss_at_base_optimum(rows, metric)
    edge = at_grid_edge(rows, metric)
    lines = [f"LR minimising {metric} (mean over seeds) per {sweep_axis(rows)} "
             f"(grid factor {factor:g}):"]  # fmt: skip
    for param in dict.fromkeys(p for p, _ in best):
        per_width = ", ".join(f"{w}: {lr:.3g}" + (" (edge)" if (p, w) in edge else "")
                              for (p, w), lr in sorted(best.items()) if p == param)
        lines.append(f"  {param:4s} {per_width}  -> optimum moves {shift[param]:.0f} grid step(s)")
        if any(p == param for p, _ in edge):
            lines.append("       (edge): the best LR swept at that size; the optimum may lie "
                         "beyond it, widen the grid there")
        seeds = per_seed.get(param, [])
        if len(seeds) > 1:
            each = ", ".join(f"{s:.0f}" for s in seeds)
            lines.append(f"       per seed: {each} grid step(s), median {np.median(seeds):.1f}")
        losses = ", ".join(f"{w}: {x:.4g}" for (p, w), x in sorted(at_base.items()) if p == param)
        lines.append(f"       {metric} at the smallest size's optimum LR: {losses}")
    return "\n".join(lines)
