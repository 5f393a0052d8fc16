"""Coordinate check: does each layer's activation scale stay width-independent while training?

For each parametrization (SP, muP) and width, a model is trained for a few steps through the real
engine; forward hooks record the mean |activation| of every layer (embedding, each block's
attention and MLP outputs, logits) during each training forward. Under muP these curves are flat
in width at every step (Yang et al. 2021, TP5 §7 "coordinate check"); under SP the logits and the
hidden layers' updates grow with width. The verdict is, per layer, the slope of log(mean |act|)
against log(width) at the last step; |slope| <= tolerance passes.

Under several ranks (DDP, FSDP2) each rank sees a slice of the batch; the sums and counts are
all-reduced, so the record is the global mean and equals the single-process one.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrain.config import TrainConfig
from pretrain.dist import all_reduce_sum
from pretrain.mup.runner import build, setup, train_steps, variant
from pretrain.optim import canonical_name

log = logging.getLogger(__name__)

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
            out = output[0] if isinstance(output, tuple) else output
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
) -> list[dict]:
    """Records {parametrization, width, seed, step, layer, mean_abs}; step 1: the initial model."""
    cfg = coord_config(cfg)
    env = setup(cfg)
    records = []
    total, started = len(parametrizations) * len(widths) * seeds, 0
    for param in parametrizations:
        for width in widths:
            for seed in range(seeds):
                started += 1
                if env.is_main:
                    log.info("coord-check %d/%d: %s width=%d seed=%d (%d steps)",
                             started, total, param, width, seed, steps)
                vcfg = variant(cfg, width, param)
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

                train_steps(vcfg, env, engine, steps, after_step=after)
                recorder.close()
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


@dataclass(frozen=True)
class LayerVerdict:
    parametrization: str
    layer: str
    slope: float
    ok: bool


def verdict(
    records: list[dict], tolerance: float = 0.1, step: int | None = None
) -> list[LayerVerdict]:
    """Per parametrization and layer: slope across widths at `step` (default: the last step)."""
    means = mean_over_seeds(records)
    step = step or max(r["step"] for r in records)
    out = []
    params = list(dict.fromkeys(r["parametrization"] for r in records))
    layers = list(dict.fromkeys(r["layer"] for r in records))
    for param in params:
        for layer in layers:
            pts = sorted(
                (w, v)
                for (p, lay, s, w), v in means.items()
                if p == param and lay == layer and s == step
            )
            k = slope([w for w, _ in pts], [v for _, v in pts])
            out.append(LayerVerdict(param, layer, k, abs(k) <= tolerance))
    return out


def format_verdict(verdicts: list[LayerVerdict], tolerance: float) -> str:
    lines = [
        "slope of log mean|act| vs log width at the last step "
        f"(|slope| <= {tolerance} is width-stable)"
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
