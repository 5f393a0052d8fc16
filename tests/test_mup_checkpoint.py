"""muP multipliers (width and depth rules) live in the optimizer's param groups: saved by DCP,
unchanged by resharding."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

from pretrain.checkpoint import dcp_io, latest_complete
from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.models.parametrization import (
    eps_multiplier,
    group_multipliers,
    in_residual_block,
)
from tests.conftest import REPO, TINY, run_train

pytestmark = pytest.mark.slow

MUP = [
    "model.width=64",
    "model.mup.enabled=true",
    "model.mup.base_width=32",
    "model.mup.wd_width_exponent=0.5",
]
DEPTH = ["model.mup.depth_alpha=0.5", "model.mup.base_depth=1"]  # TINY's depth 2: m_L = 2


def saved_groups(ckpt: Path) -> dict[str, tuple[float, float, float, float]]:
    """Parameter name -> (lr_mult, wd_mult, weight_decay, eps) as stored in a checkpoint.

    Read without a process group."""
    metadata = dcp_io.read_metadata(ckpt / "model")
    n = 1 + max(
        int(k.split(".")[2])
        for k in metadata.state_dict_metadata
        if k.startswith("optim.param_groups.")
    )
    fields = ("lr_mult", "wd_mult", "weight_decay", "eps", "params")
    state = {"optim": {"param_groups": [{f: None for f in fields} for _ in range(n)]}}
    dcp.load(
        state,
        storage_reader=dcp_io.SafeFileSystemReader(str(ckpt / "model")),
        planner=dcp_io.SafeLoadPlanner(),
        no_dist=True,
    )
    out = {}
    for group in state["optim"]["param_groups"]:
        for name in group["params"]:
            out[name] = (group["lr_mult"], group["wd_mult"], group["weight_decay"], group["eps"])
    return out


def expected_groups(rules: list[str]) -> dict[str, tuple[float, float, float, float]]:
    cfg = load_config(REPO / "configs/vit_digits.yaml", [*TINY, *rules])
    model = build_model(cfg.model)
    out = {}
    for name, kind in model.param_kinds().items():
        block = in_residual_block(name)
        lr_mult, wd_mult = group_multipliers(kind, cfg.model, block)
        eps = cfg.optim.eps * eps_multiplier(cfg.model, block)
        out[name] = (lr_mult, wd_mult, cfg.optim.weight_decay * wd_mult, eps)
    return out


@pytest.mark.parametrize("rules", [MUP, [*MUP, *DEPTH]], ids=["width", "width_and_depth"])
def test_group_multipliers_survive_save_reshard_and_load(tmp_path, rules):
    """FSDP2 at 2 ranks saves; 1 process and 3 FSDP2 ranks resume, train and save again: every
    parameter's group keeps the muP lr/wd multipliers (and the depth rule's eps) derived from
    its role and place."""
    common = [*TINY, *rules, "checkpoint.keep_last=5"]
    ref = tmp_path / "ref"
    run_train(
        2,
        [
            *common,
            "parallel.backend=fsdp2",
            "schedule.steps=3",
            "checkpoint.every_steps=3",
            f"run.dir={ref}",
        ],
    )
    expected = expected_groups(rules)
    lr_mults = {0.5, 1.0} if rules == MUP else {0.5 * 2**-0.5, 2**-0.5, 1.0}  # × m_L^(α-1)
    assert sorted({m for m, *_ in expected.values()}) == pytest.approx(sorted(lr_mults))
    first = saved_groups(latest_complete(ref / "checkpoints"))
    assert first == expected
    for nproc, backend in ((0, "single"), (3, "fsdp2")):
        run_dir = tmp_path / f"resume_{nproc}"
        shutil.copytree(
            ref / "checkpoints" / "step_00000003", run_dir / "checkpoints" / "step_00000003"
        )
        run_train(
            nproc,
            [
                *common,
                f"parallel.backend={backend}",
                "schedule.steps=5",
                "checkpoint.every_steps=5",
                f"run.dir={run_dir}",
            ],
        )
        resaved = latest_complete(run_dir / "checkpoints")
        assert resaved.name == "step_00000005", (backend, nproc)
        assert saved_groups(resaved) == first, (backend, nproc)
