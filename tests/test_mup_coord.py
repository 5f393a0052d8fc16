"""Coordinate check: muP keeps every layer width-stable, SP logits grow.

FSDP2 and DeepSpeed give the same verdict as a single process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pretrain.config import load_config
from pretrain.mup.coord_check import (
    mean_over_seeds,
    read_csv,
    run_coord_check,
    slope,
    verdict,
)
from tests.conftest import REPO, subprocess_env

# Depth 2, 4 heads, 3 inits averaged, 4 steps at the recipe's lr 2e-3 (constant, no clipping).
# Single-width runs fluctuate with the random init (few heads); averaged over 3 seeds the worst
# muP |slope| over run seeds 0/100/200/300 was 0.049-0.095 while SP's logits slope was 0.56-0.70.
OVERRIDES = [
    "data.format=memory",
    "data.name=digits",
    "data.num_workers=0",
    "model.depth=2",
    "model.num_heads=4",
    "model.mup.base_width=16",
    "data.global_batch_size=16",
    "optim.lr=2e-3",
    "run.seed=0",
]
WIDTHS, STEPS, SEEDS = [32, 64, 128], 4, 3


PROGRESS: list[str] = []


@pytest.fixture(scope="module")
def single_process_records() -> list[dict]:
    cfg = load_config(REPO / "configs/vit_digits.yaml", [*OVERRIDES, "parallel.backend=single"])
    return run_coord_check(cfg, WIDTHS, STEPS, SEEDS, progress=PROGRESS.append)


def test_slope_of_a_power_law():
    assert slope([16, 32, 64], [2.0, 4.0, 8.0]) == pytest.approx(1.0)
    assert slope([16, 32, 64], [1.0, 1.0, 1.0]) == pytest.approx(0.0)
    assert slope([16, 32], [1.0, 0.0]) != slope([16, 32], [1.0, 0.0])  # nan: no log of zero


def test_mup_layers_are_width_stable_and_sp_logits_grow(single_process_records):
    results = {
        (v.parametrization, v.layer): v for v in verdict(single_process_records, tolerance=0.1)
    }
    layers = {layer for _, layer in results}
    assert layers == {
        "patch_embed",
        "block0.attn",
        "block0.mlp",
        "block1.attn",
        "block1.mlp",
        "logits",
    }
    for layer in layers:
        assert results[("mup", layer)].ok, (layer, results[("mup", layer)].slope)
    assert results[("sp", "logits")].slope > 0.3
    assert all(
        results[("sp", f"block{i}.{p}")].slope > 0.5 for i in (0, 1) for p in ("attn", "mlp")
    )
    steps = {r["step"] for r in single_process_records}
    assert steps == set(range(1, STEPS + 1))
    assert len(PROGRESS) == 2 * len(WIDTHS) * SEEDS and PROGRESS[-1].startswith("coord-check 18/18")


def test_sp_baseline_is_fan_in_stable_at_init_and_blows_up_in_training(single_process_records):
    """TP5's contrast: SP with the standard 1/sqrt(fan_in) init is width-stable at step 1 (the
    initial model); its blow-up comes from training with width-independent learning rates."""
    means = mean_over_seeds(single_process_records)

    def slope_at(layer: str, step: int) -> float:
        return slope(WIDTHS, [means[("sp", layer, step, w)] for w in WIDTHS])

    for layer in ("block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "logits"):
        assert abs(slope_at(layer, 1)) < 0.1, layer
        assert slope_at(layer, STEPS) > 0.3, layer


def synthetic(layer_slopes: dict[str, list[float]]) -> list[dict]:
    """Records whose mean |act| is width**slope at each step (one seed, three widths)."""
    return [{"parametrization": "mup", "width": w, "seed": 0, "step": step + 1, "layer": layer,
             "mean_abs": float(w) ** k}
            for layer, ks in layer_slopes.items() for step, k in enumerate(ks)
            for w in (32, 64, 128)]  # fmt: skip


def test_verdict_reads_the_steps_after_the_first_few_and_lets_the_readout_shrink():
    """A muP readout at init shrinks (-0.5, as LM logits at step 1); that and any shrinking
    logits pass, a hidden layer that shrinks or grows later in training fails."""
    results = {v.layer: v for v in verdict(synthetic({
        "logits": [-0.5, -0.3, -0.2, -0.15, -0.12],
        "block0.mlp": [0.4, 0.3, 0.0, 0.02, -0.02],
        "block1.mlp": [0.0, 0.0, -0.2, -0.3, -0.3],
        "block1.attn": [0.0, 0.0, 0.05, 0.2, 0.3],
    }), tolerance=0.1)}  # fmt: skip
    assert results["logits"].ok and results["logits"].one_sided
    assert results["logits"].steps == (3, 4, 5)
    assert results["block0.mlp"].ok  # early steps are not read
    assert not results["block1.mlp"].ok and not results["block1.attn"].ok
    growing = verdict(synthetic({"logits": [0.0, 0.1, 0.3, 0.4, 0.5]}), tolerance=0.1)
    assert not growing[0].ok


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        ["parallel.backend=fsdp2"],
        ["parallel.backend=deepspeed", "parallel.deepspeed.zero_stage=2"],
        ["parallel.backend=deepspeed", "parallel.deepspeed.zero_stage=3"],
    ],
    ids=["fsdp2", "zero2", "zero3"],
)
def test_two_ranks_give_the_same_coord_check(single_process_records, tmp_path, backend):
    """The CLI under torchrun (FSDP2 DTensors; DeepSpeed's param groups, ZeRO-3 partitioned
    parameters): global means (all-reduced) equal the single-process ones, so the muP multipliers
    reached every group and the verdict is the same."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pretrain", "mup", "coord-check", "configs/vit_digits.yaml", *OVERRIDES, *backend,
           "--widths", *map(str, WIDTHS), "--steps", str(STEPS), "--seeds", str(SEEDS),
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "mup: every layer width-stable" in proc.stdout
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000
    sharded = read_csv(tmp_path / "coord_check.csv")

    def key(r: dict) -> tuple:
        return (r["parametrization"], r["width"], r["seed"], r["step"], r["layer"])

    single = {key(r): r["mean_abs"] for r in single_process_records}
    assert {key(r) for r in sharded} == set(single)
    for r in sharded:
        assert r["mean_abs"] == pytest.approx(single[key(r)], rel=1e-3), key(r)
    summary = json.loads((tmp_path / "verdict.json").read_text())
    for v in verdict(single_process_records, tolerance=0.1):
        got = summary[f"{v.parametrization}/{v.layer}"]
        assert got["ok"] == v.ok and got["slope"] == pytest.approx(v.slope, abs=1e-3)
