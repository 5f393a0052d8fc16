"""One optimizer step and one evaluation: the only place a training step is spelled out.

    lr from the schedule -> engine.set_lr -> grad_accum micro-batches -> engine.train_step

The trainer loop and the muP tools (coordinate check, LR transfer) call the same functions, so a
muP experiment trains and evaluates exactly as `pretrain train` does: same learning rate, same
batches, bitwise the same loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pretrain.dist import DistEnv, all_reduce_sum
from pretrain.engines.base import Engine
from pretrain.metrics import MetricsLogger
from pretrain.schedule import lr_at

if TYPE_CHECKING:
    from pretrain.config import ScheduleConfig


class DataExhausted(Exception):
    """The train loader ran out (its data budget is spent) before a full step's micro-batches.

    Raised instead of letting StopIteration escape, which a caller could mistake for the end of
    its own iteration."""

    def __init__(self, step: int):
        super().__init__(f"the train data ran out before step {step} (data budget exhausted)")
        self.step = step


@dataclass(frozen=True)
class StepResult:
    """What one step leaves behind. loss and grad_norm stay on the device (reading them is a
    host sync): the loop reads them at log steps only."""

    loss: torch.Tensor  # mean over micro-batches and ranks
    grad_norm: torch.Tensor  # before clipping
    finite: torch.Tensor  # bool, the divergence guard's input (the same on every rank)
    lr: float
    shapes: list[dict[str, torch.Size]]  # this rank's micro-batches, for tokens/FLOPs accounting


def train_step(engine: Engine, data: Iterator[dict], step: int, base_lr: float,
               schedule: ScheduleConfig, grad_accum: int) -> StepResult:
    """Optimizer step `step` (0-based) on the next `grad_accum` micro-batches of `data`.

    Raises DataExhausted when `data` ends first; nothing is trained then."""
    lr = lr_at(step, base_lr, schedule)
    engine.set_lr(lr)
    try:
        micro_batches = [next(data) for _ in range(grad_accum)]
    except StopIteration:
        raise DataExhausted(step) from None
    out = engine.train_step(micro_batches)
    shapes = [{k: v.shape for k, v in b.items()} for b in micro_batches]
    return StepResult(out.loss, out.grad_norm, out.finite, lr, shapes)


def evaluate(engine: Engine, loader, max_batches: int) -> dict[str, float]:
    """Loss (and accuracy where the family reports it) over the validation split, all ranks.

    The sums stay on the compute device (one all-reduce there, one read at the end)."""
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        for key, value in engine.eval_step(batch).items():
            sums[key] = sums.get(key, 0) + value
    keys = sorted(sums)
    totals = {}
    if keys:
        stacked = torch.stack([sums[k].to(engine.env.device) for k in keys])
        totals = dict(zip(keys, all_reduce_sum(stacked, "all_reduce(eval sums)").tolist()))
    count = max(totals.get("count", 0.0), 1.0)
    out = {"loss": totals.get("loss_sum", float("nan")) / count}
    if "correct" in totals:
        out["accuracy"] = totals["correct"] / count
    return out


def run_eval_extras(engine: Engine, family, loader, step: int, run_dir: Path, env: DistEnv,
                    logger: MetricsLogger) -> dict[str, float]:
    """The family's extra evaluation (samples, attention statistics) on the first val batch."""
    if family.eval_extras is None:
        return {}
    batch = engine.to_device(next(iter(loader)))
    engine.model.eval()
    with torch.no_grad(), engine.autocast():
        samples_dir = run_dir / "samples" if env.is_main else None
        out = family.eval_extras(engine.model, batch, step, samples_dir)
    scalars = {}
    for key, value in out.items():
        if key.startswith("image/") and isinstance(value, torch.Tensor):
            logger.image(key[len("image/"):], value, step)
        else:
            scalars[key] = float(value)
    return scalars
