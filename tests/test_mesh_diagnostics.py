"""Diagnostics on a tensor-parallel mesh (4 gloo ranks, dp_shard=2 x tp=2) read the same as
without TP: the muP coordinate check and the top singular values; throughput accounting gives
each device its 1/(dp x tp) share of a step's FLOPs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import load_config
from pretrain.mesh import MeshShape, device_flops
from pretrain.mup.coord_check import read_csv, run_coord_check
from pretrain.run_dir import read_metrics
from tests.conftest import REPO, subprocess_env
from tests.test_mesh import FAMILY_DATA, LINEAR_ADAM, TP, run

LM_COORD = [*FAMILY_DATA["lm"], "data.num_workers=0", "model.depth=2", "model.num_heads=4",
            "model.mup.base_width=16", "data.global_batch_size=8", "optim.lr=2e-3",
            "run.seed=0"]
WIDTHS, STEPS = [32, 64], 3


def coord_key(r: dict) -> tuple:
    return (r["parametrization"], r["width"], r["seed"], r["step"], r["layer"])


@pytest.mark.slow
def test_coord_check_with_tp_records_what_one_process_does(tmp_path):
    """`pretrain mup coord-check` on the LM at (dp_shard=2, tp=2) against one process: every
    layer's mean |activation| at every step within 1e-3. The logits leave the model split by
    vocabulary and the blocks' outputs replicated on the TP ranks; both must count each
    element once in the global mean."""
    cfg = load_config(REPO / "configs/lm_bytes.yaml", [*LM_COORD, "parallel.backend=single"])
    single = {coord_key(r): r["mean_abs"]
              for r in run_coord_check(cfg, WIDTHS, STEPS, 1, ("mup",))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
           "-m", "pretrain", "mup", "coord-check", "configs/lm_bytes.yaml", *LM_COORD,
           "parallel.backend=fsdp2", *TP, "--widths", *map(str, WIDTHS), "--steps", str(STEPS),
           "--seeds", "1", "--parametrizations", "mup", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    sharded = {coord_key(r): r["mean_abs"] for r in read_csv(tmp_path / "coord_check.csv")}
    assert sharded.keys() == single.keys()
    assert {k[-1] for k in single} >= {"tok_embed", "logits", "block1.mlp"}
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-3), key


def test_device_flops_divide_the_step_by_data_and_tensor_parallelism():
    step = 8e12
    assert device_flops(step, MeshShape(1, 4, 1)) == device_flops(step, MeshShape(1, 2, 2)) == 2e12
    assert device_flops(step, MeshShape(2, 1, 4)) == 1e12  # HSDP x TP: all 8 devices share it
    assert device_flops(step, MeshShape(1, 1, 1)) == step


@pytest.mark.slow
def test_singular_values_and_mfu_under_tp(tmp_path):
    """`model.mup.log_singular_values` at (dp_shard=2, tp=2): every matrix's σ_max gathered from
    its (dp, tp) shards, the vocabulary-split readout and the fused qkv / SwiGLU rows included,
    within 1e-4 of one process at every logged step. The throughput record's per-device
    FLOP/s is the step's FLOP/s over dp x tp (each TP rank computes 1/tp of its data-parallel
    share), and MFU is that over one device's peak (logging.peak_tflops=1)."""
    common = ["schedule.steps=4", "checkpoint.every_steps=0", "checkpoint.save_at_end=false",
              "model.mup.enabled=true", "model.mup.base_width=16", "logging.peak_tflops=1.0",
              "model.mup.log_singular_values=true", *LINEAR_ADAM]
    run(0, "lm", [*common, f"run.dir={tmp_path / 'one'}"])
    run(4, "lm", [*common, *TP, f"run.dir={tmp_path / 'tp'}"])

    def singular_values(run_dir: Path) -> dict[tuple[int, str], float]:
        return {(r["step"], k): v for r in read_metrics(run_dir) if r["split"] == "sv"
                for k, v in r.items() if k not in ("step", "split")}

    one, tp = singular_values(tmp_path / "one"), singular_values(tmp_path / "tp")
    assert tp.keys() == one.keys() and (4, "head.weight") in one
    assert (4, "blocks.1.attn.qkv.weight") in one
    for key, value in one.items():
        assert tp[key] == pytest.approx(value, rel=1e-4), key
    stats = json.loads((tmp_path / "tp" / "model_stats.json").read_text())
    for record in (r for r in read_metrics(tmp_path / "tp") if r["split"] == "train"):
        step_flops_per_s = record["samples_per_s"] * stats["flops_per_sample"]
        assert record["device_flops_per_s"] == pytest.approx(step_flops_per_s / 4, rel=1e-6)
        assert record["mfu"] == pytest.approx(record["device_flops_per_s"] / 1e12, rel=1e-9)
