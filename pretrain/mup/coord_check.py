"""Coordinate check: does each layer's activation scale stay width-independent while training?

For each parametrization (SP, muP) and width, a model is trained for a few steps through the real
engine; forward hooks record the mean |activation| of every layer (embedding, each block's
attention and MLP outputs, logits) during each training forward. Under muP these curves are flat
in width at every step (Yang et al. 2021, TP5 §7 "coordinate check"); under SP the logits and the
hidden layers' updates grow with width. SP here is TP5's baseline: the standard 1/sqrt(fan_in)
init (model.mup.sp_fan_in_init), so it is width-stable at init and the contrast is the blow-up
in training, not a fixed init std that is already wrong at step 1.

The verdict is, per layer, the slope of log(mean |act|) against log(width), averaged over the
steps after the first `skip_steps` (the trend in training, not one early step: a muP readout
still carries its init, which shrinks as 1/sqrt(width) under the 1/m multiplier). |slope| <=
tolerance passes, except for the logits, which theory lets shrink: only growth fails there.

Under several ranks (DDP, FSDP2) each rank sees a slice of the batch; the sums and counts are
all-reduced, so the record is the global mean and equals the single-process one.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pretrain.config import TrainConfig
from pretrain.dist import all_reduce_sum
from pretrain.mup.runner import build, setup, train_steps, variant
from pretrain.optim import canonical_name

LOGITS = "logits"
_BLOCK_PART = re.compile(r"^blocks\.(\d+)\.(attn|mlp)$")


def coord_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Label -> module whose output is recorded: embeddings, blocks.i.attn/mlp, the root (logits).

    Embedding modules are the owners of parameters tagged `embedding` that are module weights
    (patch or token embedding); bare parameters (position embedding) have no module of their own.
    """
    kinds = model.param_kinds()
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    layers: dict[str, nn.Module] = {}
    for name, kind in kinds.items():
        owner = name.rsplit(".", 1)[0] if name.endswith(".weight") else None
        if kind == "embedding" and owner in modules:
            layers[owner] = modules[owner]
    for name, module in modules.items():
        match = _BLOCK_PART.match(name)
        if match:
            layers[f"block{match.group(1)}.{match.group(2)}"] = module
    layers[LOGITS] = model
    return layers


class CoordRecorder:
    """Forward hooks that sum |output| and element counts per layer until `flush`."""

    def __init__(self, model: nn.Module):
        self.layers = coord_layers(model)
        self.sums = {name: torch.zeros(2, dtype=torch.float64) for name in self.layers}
        self.handles = [
            m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()
        ]

    def _hook(self, name: str):
        def hook(module, args, output):
            out = local_values(output[0] if isinstance(output, tuple) else output)
            self.sums[name] += torch.tensor(
                [out.detach().float().abs().sum().item(), out.numel()], dtype=torch.float64
            )

        return hook

    def flush(self) -> dict[str, float]:
        """Global mean |activation| per layer since the last flush (all ranks must call)."""
        names = list(self.layers)
        totals = all_reduce_sum(torch.stack([self.sums[n] for n in names]))
        for n in names:
            self.sums[n].zero_()
        return {n: float(s / max(c, 1.0)) for n, (s, c) in zip(names, totals.tolist())}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def coord_config(cfg: TrainConfig) -> TrainConfig:
    """The recipe with what would confound width scaling removed: constant lr without warmup,
    no gradient clipping (a global norm couples all layers), no recomputation (hooks would fire
    twice)."""
    import copy

    out = copy.deepcopy(cfg)
    out.schedule.name, out.schedule.warmup_steps = "constant", 0
    out.optim.grad_clip = 0.0
    out.parallel.activation_checkpointing = False
    out.parallel.compile = False
    return out


def run_coord_check(
    cfg: TrainConfig,
    widths: list[int],
    steps: int,
    seeds: int = 1,
    parametrizations: tuple[str, ...] = ("sp", "mup"),
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Records {parametrization, width, seed, step, layer, mean_abs}; step 1: the initial model.

    `progress` gets one line per trained variant (its final loss), e.g. print on rank 0."""
    cfg = coord_config(cfg)
    env = setup(cfg)
    records = []
    total, done = len(parametrizations) * len(widths) * seeds, 0
    for param in parametrizations:
        for width in widths:
            for seed in range(seeds):
                vcfg = variant(cfg, width, param)
                vcfg.model.mup.sp_fan_in_init = param == "sp"  # TP5's SP: fan-in init
                vcfg.data.seed = cfg.data.seed + seed
                engine = build(vcfg, env, cfg.run.seed + seed)
                recorder = CoordRecorder(engine.model)

                def after(
                    step: int, loss: float, recorder=recorder, width=width, seed=seed, param=param
                ) -> None:
                    for layer, value in recorder.flush().items():
                        records.append(
                            {
                                "parametrization": param,
                                "width": width,
                                "seed": seed,
                                "step": step + 1,
                                "layer": layer,
                                "mean_abs": value,
                            }
                        )

                losses = train_steps(vcfg, env, engine, steps, after_step=after)
                recorder.close()
                done += 1
                if progress is not None:
                    progress(f"coord-check {done}/{total}: {param} width {width} seed {seed}: "
                             f"{len(losses)} steps, loss {losses[-1]:.4g}")  # fmt: skip
    return records


def slope(widths: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width); nan if any value is not positive."""
    if len(widths) < 2 or any(not (v > 0 and math.isfinite(v)) for v in values):
        return float("nan")
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def mean_over_seeds(records: list[dict]) -> dict[tuple[str, str, int, int], float]:
    """(parametrization, layer, step, width) -> mean over seeds of mean |activation|."""
    acc: dict[tuple, list[float]] = {}
    for r in records:
        acc.setdefault((r["parametrization"], r["layer"], r["step"], r["width"]), []).append(
            r["mean_abs"]
        )
    return {k: float(np.mean(v)) for k, v in acc.items()}


MAY_SHRINK = (LOGITS,)  # layers theory lets shrink with width (the readout's init part)
SKIP_STEPS = 2  # the first steps the verdict does not read (the initial model, one update)


@dataclass(frozen=True)
class LayerVerdict:
    parametrization: str
    layer: str
    slope: float  # mean over the verdict's steps of the per-step slope across widths
    ok: bool
    steps: tuple[int, ...] = ()  # the steps read
    one_sided: bool = False  # only growth fails (MAY_SHRINK)


def verdict_steps(records: list[dict], skip_steps: int = SKIP_STEPS) -> tuple[int, ...]:
    """The steps after the first `skip_steps`; the last step alone if the run is that short."""
    steps = sorted({r["step"] for r in records})
    return tuple(s for s in steps if s > skip_steps) or (steps[-1],)


def verdict(
    records: list[dict], tolerance: float = 0.1, skip_steps: int = SKIP_STEPS
) -> list[LayerVerdict]:
    """Per parametrization and layer: the slope across widths, averaged over the steps after
    the first `skip_steps`; two-sided, one-sided (growth only) for MAY_SHRINK layers."""
    means = mean_over_seeds(records)
    steps = verdict_steps(records, skip_steps)
    out = []
    params = list(dict.fromkeys(r["parametrization"] for r in records))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    for param in params:
        for layer in layers:
            per_step = []
            for step in steps:
                pts = sorted(
                    (w, v)
                    for (p, lay, s, w), v in means.items()
                    if p == param and lay == layer and s == step
                )
                per_step.append(slope([w for w, _ in pts], [v for _, v in pts]))
            k = float(np.mean(per_step))
            one_sided = layer in MAY_SHRINK
            ok = k <= tolerance if one_sided else abs(k) <= tolerance
            out.append(LayerVerdict(param, layer, k, ok, steps, one_sided))
    return out


def format_verdict(verdicts: list[LayerVerdict], tolerance: float) -> str:
    steps = verdicts[0].steps if verdicts else ()
    lines = [
        f"slope of log mean|act| vs log width, mean over steps {', '.join(map(str, steps))} "
        f"(|slope| <= {tolerance} is width-stable; {', '.join(MAY_SHRINK)}: may shrink)"
    ]
    for v in verdicts:
        mark = "ok" if v.ok else "GROWS" if v.slope > 0 else "SHRINKS"
        lines.append(f"  {v.parametrization:4s} {v.layer:14s} {v.slope:+.3f}  {mark}")
    for param in dict.fromkeys(v.parametrization for v in verdicts):
        bad = [v.layer for v in verdicts if v.parametrization == param and not v.ok]
        status = f"not width-stable: {', '.join(bad)}" if bad else "every layer width-stable"
        lines.append(f"{param}: {status}")
    return "\n".join(lines)


def write_csv(records: list[dict], path: Path) -> None:
    fields = ["parametrization", "width", "seed", "step", "layer", "mean_abs"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [
            {
                "parametrization": r["parametrization"],
                "width": int(r["width"]),
                "seed": int(r["seed"]),
                "step": int(r["step"]),
                "layer": r["layer"],
                "mean_abs": float(r["mean_abs"]),
            }
            for r in csv.DictReader(f)
        ]


def local_values(out: torch.Tensor) -> torch.Tensor:
    """This rank's elements of a layer's output: a DTensor split over ranks (an LM's logits,
    split by vocabulary under tensor parallelism) counts its shard, so the all-reduced sums
    and counts hold each element once; replicated outputs count once per rank, on both sides
    of the mean."""
    return out.to_local() if isinstance(out, DTensor) else out
