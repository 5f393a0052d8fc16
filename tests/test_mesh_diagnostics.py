"""Diagnostics on a tensor-parallel mesh (4 gloo ranks, dp_shard=2 x tp=2) read the same as
without TP: the muP coordinate check and the top singular values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pretrain.config import load_config
from pretrain.mup.coord_check import read_csv, run_coord_check
from tests.conftest import REPO, subprocess_env
from tests.test_mesh import FAMILY_DATA, TP

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
