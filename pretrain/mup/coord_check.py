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

Across depth (`depths`, at one width) the same machinery checks the depth rule (Dey et al.
2025, CompleteP, Fig. 7): recorded are what exists at every depth: the embeddings, `residual`
(the last block's output, the stream the readout reads), `residual_change` (that output minus
the initial model's on the same input: what training has moved) and the logits. With muP's
width rules alone each block's update is Θ(lr) whatever the depth, so the residual stream
moves Θ(depth); under depth-muP / CompleteP the branch multiplier and the block lr keep the
change Θ(1): flat in depth. `residual` may shrink (one-sided, as the logits): at α = 1 the
initial branches' sum falls as depth^-1/2 under the embedding's part.

Under several ranks (DDP, FSDP2) each rank sees a slice of the batch; the sums and counts are
all-reduced, so the record is the global mean and equals the single-process one.
"""

from __future__ import annotations

import copy
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
from pretrain.mup.runner import build, setup, sizes, sweep_axis, train_steps, variant
from pretrain.optim import canonical_name

LOGITS = "logits"
RESIDUAL = "residual"  # the last block's output (depth sweeps)
RESIDUAL_CHANGE = "residual_change"  # ... minus the initial model's on the same input
_BLOCK_PART = re.compile(r"^blocks\.(\d+)\.(attn|mlp)$")


def coord_layers(model: nn.Module, depth_sweep: bool = False) -> dict[str, nn.Module]:
    """Label -> module whose output is recorded: embeddings, blocks.i.attn/mlp, the root (logits).

    Embedding modules are the owners of parameters tagged `embedding` that are module weights
    (patch or token embedding); bare parameters (position embedding) have no module of their own.
    `depth_sweep`: no per-block layers (they differ between depths): the last block's output
    (`residual`) instead.
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
        if match and not depth_sweep:
            layers[f"block{match.group(1)}.{match.group(2)}"] = module
    if depth_sweep:
        layers[RESIDUAL] = modules[f"blocks.{len(model.blocks) - 1}"]
    layers[LOGITS] = model
    return layers


class CoordRecorder:
    """Forward hooks that sum |output| and element counts per layer until `flush`.

    `depth_sweep`: also `residual_change`, from a frozen copy of the initial model run on each
    training input (one process: the copy is a plain module)."""

    def __init__(self, model: nn.Module, depth_sweep: bool = False):
        # copied before any hook is registered: the copy must not feed this recorder's sums
        self.initial = copy.deepcopy(model).eval() if depth_sweep else None
        self.layers = coord_layers(model, depth_sweep)
        names = [*self.layers, RESIDUAL_CHANGE] if depth_sweep else list(self.layers)
        self.sums = {name: torch.zeros(2, dtype=torch.float64) for name in names}
        self.handles = [
            m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()
        ]
        self.outputs: dict[str, torch.Tensor] = {}
        if self.initial is not None:
            self.handles += [
                self.layers[RESIDUAL].register_forward_hook(self._keep("now")),
                self.initial.blocks[-1].register_forward_hook(self._keep("initial")),
                model.register_forward_hook(self._change, with_kwargs=True),
            ]

    def _add(self, name: str, values: torch.Tensor) -> None:
        values = local_values(values)  # a vocabulary-split DTensor counts its own shard
        self.sums[name] += torch.tensor(
            [values.detach().float().abs().sum().item(), values.numel()], dtype=torch.float64
        )

    def _hook(self, name: str):
        def hook(module, args, output):
            self._add(name, output[0] if isinstance(output, tuple) else output)

        return hook

    def _keep(self, key: str):
        def hook(module, args, output):
            self.outputs[key] = output.detach()

        return hook

    @torch.no_grad()
    def _change(self, module, args, kwargs, output) -> None:
        self.initial(*args, **kwargs)
        self._add(RESIDUAL_CHANGE, self.outputs.pop("now") - self.outputs.pop("initial"))

    def flush(self) -> dict[str, float]:
        """Global mean |activation| per layer since the last flush (all ranks must call)."""
        names = list(self.sums)
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
    depths: list[int] | None = None,
    heads: str = "fixed",
) -> list[dict]:
    """Records {parametrization, width, depth, seed, step, layer, mean_abs}; step 1: the initial
    model. `depths`: sweep depth at the one width in `widths` instead of width; `heads`: the
    head rule (`runner.HEAD_RULES`).

    `progress` gets one line per trained variant (its final loss), e.g. print on rank 0."""
    cfg = coord_config(cfg)
    points = sizes(cfg, widths, depths)
    if depths and cfg.parallel.backend != "single":
        raise ValueError(f"a depth coordinate check runs in one process (parallel.backend="
                         f"single; got {cfg.parallel.backend}): it keeps a plain copy of the "
                         "initial model")
    env = setup(cfg)
    records = []
    total, done = len(parametrizations) * len(points) * seeds, 0
    for param in parametrizations:
        for width, depth in points:
            for seed in range(seeds):
                vcfg = variant(cfg, width, param, depth=depth, heads=heads)
                vcfg.model.mup.sp_fan_in_init = param == "sp"  # TP5's SP: fan-in init
                vcfg.data.seed = cfg.data.seed + seed
                engine = build(vcfg, env, cfg.run.seed + seed)
                recorder = CoordRecorder(engine.model, depth_sweep=bool(depths))

                def after(
                    step: int, loss: float, recorder=recorder, width=width, depth=depth,
                    seed=seed, param=param,
                ) -> None:  # fmt: skip
                    for layer, value in recorder.flush().items():
                        records.append(
                            {
                                "parametrization": param,
                                "width": width,
                                "depth": depth,
                                "seed": seed,
                                "step": step + 1,
                                "layer": layer,
                                "mean_abs": value,
                            }
                        )

                losses = train_steps(vcfg, env, engine, steps, after_step=after)
                recorder.close()
                engine.close()
                done += 1
                if progress is not None:
                    what = f"{param} width {width} depth {depth} seed {seed}"
                    progress(f"coord-check {done}/{total}: {what}: {len(losses)} steps, "
                             f"loss {losses[-1]:.4g}")  # fmt: skip
    return records


def slope(widths: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width); nan if any value is not positive."""
    if len(widths) < 2 or any(not (v > 0 and math.isfinite(v)) for v in values):
        return float("nan")
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def mean_over_seeds(records: list[dict]) -> dict[tuple[str, str, int, int], float]:
    """(parametrization, layer, step, size) -> mean over seeds of mean |activation|; size is the
    swept axis (`runner.sweep_axis`): the width, or the depth in a depth sweep."""
    axis = sweep_axis(records)
    acc: dict[tuple, list[float]] = {}
    for r in records:
        acc.setdefault((r["parametrization"], r["layer"], r["step"], r[axis]), []).append(
            r["mean_abs"]
        )
    return {k: float(np.mean(v)) for k, v in acc.items()}


# layers theory lets shrink with width (the readout's init part) or depth (the initial
# branches' sum under the depth rule)
MAY_SHRINK = (LOGITS, RESIDUAL)
SKIP_STEPS = 2  # the first steps the verdict does not read (the initial model, one update)


@dataclass(frozen=True)
class LayerVerdict:
    parametrization: str
    layer: str
    slope: float  # mean over the verdict's steps of the per-step slope across sizes
    ok: bool
    steps: tuple[int, ...] = ()  # the steps read
    one_sided: bool = False  # only growth fails (MAY_SHRINK)
    axis: str = "width"  # what the slope is taken against (width, or depth in a depth sweep)


def verdict_steps(records: list[dict], skip_steps: int = SKIP_STEPS) -> tuple[int, ...]:
    """The steps after the first `skip_steps`; the last step alone if the run is that short."""
    steps = sorted({r["step"] for r in records})
    return tuple(s for s in steps if s > skip_steps) or (steps[-1],)


def verdict(
    records: list[dict], tolerance: float = 0.1, skip_steps: int = SKIP_STEPS
) -> list[LayerVerdict]:
    """Per parametrization and layer: the slope across widths (or depths), averaged over the
    steps after the first `skip_steps`; two-sided, one-sided (growth only) for MAY_SHRINK
    layers."""
    means = mean_over_seeds(records)
    steps = verdict_steps(records, skip_steps)
    axis = sweep_axis(records)
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
            out.append(LayerVerdict(param, layer, k, ok, steps, one_sided, axis))
    return out


def format_verdict(verdicts: list[LayerVerdict], tolerance: float) -> str:
    steps = verdicts[0].steps if verdicts else ()
    axis = verdicts[0].axis if verdicts else "width"
    lines = [
        f"slope of log mean|act| vs log {axis}, mean over steps {', '.join(map(str, steps))} "
        f"(|slope| <= {tolerance} is {axis}-stable; {', '.join(MAY_SHRINK)}: may shrink)"
    ]
    for v in verdicts:
        mark = "ok" if v.ok else "GROWS" if v.slope > 0 else "SHRINKS"
        lines.append(f"  {v.parametrization:4s} {v.layer:14s} {v.slope:+.3f}  {mark}")
    for param in dict.fromkeys(v.parametrization for v in verdicts):
        bad = [v.layer for v in verdicts if v.parametrization == param and not v.ok]
        status = f"not {axis}-stable: {', '.join(bad)}" if bad else f"every layer {axis}-stable"
        lines.append(f"{param}: {status}")
    return "\n".join(lines)


def write_csv(records: list[dict], path: Path) -> None:
    fields = ["parametrization", "width", "depth", "seed", "step", "layer", "mean_abs"]
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
                "depth": int(r.get("depth") or 0),  # files written before depth sweeps: 0
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
