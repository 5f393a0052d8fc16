"""`pretrain mup sv-compare RUN_A RUN_B`: two runs' top singular values, layer by layer.

Fan et al. 2025 ("Robust Layerwise Scaling Rules by Proper Weight Decay Tuning") recommend
checking, before trusting a transferred weight decay, that each matrix's top singular value
σ_max at the target width matches the proxy's: the steady state √(η/λ)·d^0.75 is what the
λ ∝ √d rule keeps width-invariant. Runs trained with model.mup.log_singular_values=true log
σ_max of every hidden and readout matrix to metrics.jsonl (split "sv"); this reads them back.

The readout's raw weight is not what the forward applies: muP multiplies its input by
output_mult/m, so its σ_max is compared as σ_max(W)·output_mult (the effective matrix),
from each run's own saved config. What to expect when both runs are muP: hidden matrices'
ratio 1 (with λ ∝ √d); the effective readout's √(width_A/width_B), as it maps features of norm
Θ(√width) to Θ(1) logits (its init and its low-rank Adam updates both have raw σ_max ∝ √width,
times 1/m). Measured on configs/mup_vit_digits.yaml, widths 32 -> 256, 100 steps: hidden
0.98-1.09, readout 0.31 (expected 0.35).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from pretrain.run_dir import read_metrics

SV_SPLIT = "sv"


class SvCompareError(ValueError):
    """Bad input: a run directory without a config or without logged singular values."""


@dataclass(frozen=True)
class RunSingularValues:
    run_dir: Path
    width: int
    step: int
    mup: bool
    values: dict[str, float]  # canonical parameter name -> effective σ_max
    kinds: dict[str, str]  # canonical parameter name -> muP role (hidden | readout)


def read_run(run_dir: str | Path, step: int | None = None) -> RunSingularValues:
    """Effective σ_max per matrix at `step` (default: the last logged one) of one run."""
    from pretrain.config import ConfigError, load_config
    from pretrain.models import build_model
    from pretrain.models.parametrization import output_mult

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise SvCompareError(f"{run_dir}: no config.yaml (not a run directory)")
    try:
        model_cfg = load_config(config).model
    except ConfigError as e:
        raise SvCompareError(f"{config}: {e}") from None
    records = [r for r in read_metrics(run_dir) if r.get("split") == SV_SPLIT]
    if not records:
        raise SvCompareError(f"{run_dir}: metrics.jsonl has no singular values "
                             "(train with model.mup.log_singular_values=true)")  # fmt: skip
    if step is not None:
        records = [r for r in records if r.get("step") == step]
        if not records:
            raise SvCompareError(f"{run_dir}: no singular values logged at step {step}")
    record = records[-1]
    kinds = build_model(model_cfg, meta=True).param_kinds()  # roles only: allocates nothing
    mult = output_mult(model_cfg)
    values = {}
    for name, value in record.items():
        if name in ("step", "split"):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or name not in kinds:
            raise SvCompareError(f"{run_dir}: bad singular value record {name!r}: {value!r}")
        values[name] = float(value) * (mult if kinds[name] == "readout" else 1.0)
    kinds_logged = {name: kinds[name] for name in values}
    return RunSingularValues(run_dir, model_cfg.width, int(record["step"]), model_cfg.mup.enabled,
                             values, kinds_logged)  # fmt: skip


def expected_ratio(kind: str, a: RunSingularValues, b: RunSingularValues) -> float:
    """The width-consistent σ_B / σ_A under muP (module docstring); nan unless both are muP."""
    if not (a.mup and b.mup):
        return math.nan
    return math.sqrt(a.width / b.width) if kind == "readout" else 1.0


def compare(a: RunSingularValues, b: RunSingularValues) -> list[dict]:
    """One row per matrix both runs logged, in run A's order: σ_A, σ_B, σ_B / σ_A and the
    ratio muP expects."""
    common = [name for name in a.values if name in b.values]
    if not common:
        raise SvCompareError(f"{a.run_dir} and {b.run_dir} share no logged matrix")
    return [{"layer": name, "sigma_a": a.values[name], "sigma_b": b.values[name],
             "ratio": b.values[name] / a.values[name] if a.values[name] else math.inf,
             "expected": expected_ratio(a.kinds[name], a, b)}
            for name in common]  # fmt: skip


def format_table(rows: list[dict], a: RunSingularValues, b: RunSingularValues) -> str:
    """The table printed: one line per matrix and the spread of the ratios."""
    lines = [
        f"A: {a.run_dir} (width {a.width}, step {a.step})",
        f"B: {b.run_dir} (width {b.width}, step {b.step})",
        "effective top singular value (readout: times its multiplier); ratio = B / A",
        f"  {'layer':40s} {'sigma_A':>10s} {'sigma_B':>10s} {'ratio':>8s} {'muP':>6s}",
    ]
    for r in rows:
        lines.append(f"  {r['layer']:40s} {r['sigma_a']:10.4g} {r['sigma_b']:10.4g} "
                     f"{r['ratio']:8.3f} {r['expected']:6.3f}")  # fmt: skip
    ratios = sorted(r["ratio"] for r in rows)
    lines.append(f"ratio: min {ratios[0]:.3f}, median {ratios[len(ratios) // 2]:.3f}, "
                 f"max {ratios[-1]:.3f} (column muP: the width-consistent ratio)")  # fmt: skip
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["layer", "sigma_a", "sigma_b", "ratio", "expected"])
        writer.writeheader()
        writer.writerows(rows)
