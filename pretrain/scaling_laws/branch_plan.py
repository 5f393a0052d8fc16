"""Branched WSD plans: one stable-phase run per model size, and short decay branches resumed
from its checkpoints, so K run lengths of one size cost about one run (plus the decays).

A WSD run of T steps with its decay starting at step s has the LR of a constant run (same
warmup) up to step s (pretrain/schedule.py). So a stable run `NAME-stable` (schedule constant,
steps = the last decay start, a checkpoint at every decay start) followed by, for each decay
start s, a branch `NAME-decayS` (schedule wsd, steps T = s + d with d = round(ratio * s) decay
steps, `checkpoint.resume_fallback` = the stable run's checkpoint of step s) trains exactly the
WSD run of length T: checkpoints restore the model, optimizer, loader position and RNG, so the
branch's first step is bitwise the unbranched run's step s + 1 (tests/test_scaling_branches.py).
A branch requeued after a checkpoint of its own resumes from that (`checkpoint.resume=auto`
comes first), not from the stable run's, so no compute is spent twice.
`collect` attributes each branch to its stable run (`branch_of`) and decay start
(`decay_start`). The stable run must finish before its branches start, so each branch lists it
in `after` (launch/sweep.py): `pretrain scaling run` runs the sweep in order and skips the
branches of a failed stable run; `pretrain slurm sweep` submits each branch with
`--dependency=afterok:` its stable run's job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pretrain.scaling_laws.plan import PlannedRun, Shape, StatsFn
from pretrain.scaling_laws.validate import ScalingDataError

MAX_STABLE_CHECKPOINTS = 64  # a checkpoint every gcd(decay starts) steps; refuse a flood


def step_dir_name(step: int) -> str:
    """The checkpoint directory of `step` (pretrain.checkpoint.commit's naming)."""
    from pretrain.checkpoint.commit import step_dir_name as name

    return name(step)


def branch_length(decay_start: int, decay_ratio: float) -> tuple[int, float]:
    """(total steps, schedule.decay_fraction) of the WSD run decaying from `decay_start` for
    round(decay_ratio * decay_start) steps, checked against the schedule's own rounding."""
    decay = max(1, int(round(decay_ratio * decay_start)))
    total = decay_start + decay
    fraction = decay / total
    if max(int(round(total * fraction)), 1) != decay:  # pretrain/schedule.py's decay length
        raise ScalingDataError(f"decay start {decay_start}: cannot express {decay} decay steps "
                               f"of {total} as a decay_fraction")  # fmt: skip
    return total, fraction


def plan_branched_wsd(
    shapes: list[Shape],
    decay_starts: Sequence[int],
    stats_fn: StatsFn,
    global_batch_size: int,
    root: str | Path,
    *,
    decay_ratio: float = 0.25,
    warmup_steps: int = 0,
    evals_per_run: int = 10,
    family: str = "model",
) -> list[PlannedRun]:
    """Per shape: its stable run, then one decay branch per decay start (in that order)."""
    starts = sorted({int(s) for s in decay_starts})
    if not starts or starts[0] <= warmup_steps:
        raise ScalingDataError(f"decay starts {list(decay_starts)} must be after the "
                               f"{warmup_steps} warmup steps")  # fmt: skip
    if not 0 < decay_ratio <= 1:
        raise ScalingDataError(f"decay ratio must be in (0, 1], got {decay_ratio}")
    every = math.gcd(*starts)
    if starts[-1] // every > MAX_STABLE_CHECKPOINTS:
        raise ScalingDataError(
            f"decay starts {starts} share only the divisor {every}: the stable run would keep "
            f"{starts[-1] // every} checkpoints; choose starts with a larger common divisor"
        )
    runs: list[PlannedRun] = []
    for shape in shapes:
        st = stats_fn(shape.overrides())
        base = f"{family}-w{shape.width}-d{shape.depth}"

        def planned(name: str, steps: int, overrides: dict, shape=shape, st=st) -> PlannedRun:
            overrides = {**shape.overrides(), "schedule.steps": steps,
                         "schedule.warmup_steps": warmup_steps,
                         "logging.eval_every_steps": max(1, steps // evals_per_run),
                         "logging.every_steps": max(1, steps // (2 * evals_per_run)),
                         "run.name": name, **overrides}  # fmt: skip
            return PlannedRun(name, float(steps * global_batch_size * st["flops_per_sample"]),
                              shape, int(st["params"]), int(st["flops_per_sample"]),
                              int(st["tokens_per_sample"]), steps, overrides,
                              global_batch_size)  # fmt: skip

        stable = f"{base}-stable"
        runs.append(planned(stable, starts[-1], {
            "schedule.name": "constant", "checkpoint.every_steps": every,
            "checkpoint.keep_last": starts[-1] // every + 1, "checkpoint.save_at_end": True,
        }))  # fmt: skip
        for s in starts:
            total, fraction = branch_length(s, decay_ratio)
            ckpt = Path(root) / stable / "checkpoints" / step_dir_name(s)
            run = planned(f"{base}-decay{s}", total, {
                "schedule.name": "wsd", "schedule.decay_fraction": fraction,
                "checkpoint.resume": "auto", "checkpoint.resume_fallback": str(ckpt),
            })  # fmt: skip
            # evaluations fall in the branch's own steps (s, total]
            run.overrides["logging.eval_every_steps"] = max(1, (total - s) // evals_per_run)
            run.after = (stable,)
            runs.append(run)
    return runs


def branch_source(overrides: dict) -> str:
    """The checkpoint a branch starts from: `checkpoint.resume_fallback` (this plan's), or an
    explicit `checkpoint.resume` path (plans written before the fallback existed); "" if none."""
    fallback = str(overrides.get("checkpoint.resume_fallback", "") or "")
    resume = str(overrides.get("checkpoint.resume", "auto"))
    return fallback or ("" if resume in ("auto", "none") else resume)


def branched_cost(runs: list[PlannedRun]) -> tuple[float, float]:
    """(FLOPs the branched plan trains, FLOPs the same WSD runs would cost trained alone)."""
    spent = alone = 0.0
    for r in runs:
        per_step = r.batch * r.flops_per_sample
        if r.overrides.get("schedule.name") == "constant":
            spent += r.steps * per_step
            continue
        start = int(Path(str(branch_source(r.overrides))).name.removeprefix("step_"))
        spent += (r.steps - start) * per_step
        alone += r.steps * per_step
    return spent, alone
