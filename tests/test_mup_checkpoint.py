"""muP multipliers (width and depth rules) live in the optimizer's param groups: saved by DCP,
unchanged by resharding."""

from __future__ import annotations

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
from pretrain.run_dir import read_metrics
from tests.conftest import REPO, TINY, subprocess_env
from tests.train_runs_worker import Run, RunBatch

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


RULES = {"width": MUP, "width_and_depth": [*MUP, *DEPTH]}
RESHARD_ON = {"single": 0, "fsdp2": 3}  # backend -> ranks the 2-rank checkpoint resumes on
RECIPE = "configs/vit_digits.yaml"
# The saving runs, then the resumes, one launch per world size (tests/train_runs_worker.py).
BATCH = RunBatch({
    **{f"{name}_ref": Run(2, RECIPE, (*TINY, *rules, "checkpoint.keep_last=5",
                                      "parallel.backend=fsdp2", "schedule.steps=3",
                                      "checkpoint.every_steps=3"))
       for name, rules in RULES.items()},
    **{f"{name}_{backend}": Run(nproc, RECIPE, (*TINY, *rules, "checkpoint.keep_last=5",
                                                f"parallel.backend={backend}",
                                                "schedule.steps=5", "checkpoint.every_steps=5"),
                                copy=(f"{name}_ref", "checkpoints/step_00000003"))
       for name, rules in RULES.items() for backend, nproc in RESHARD_ON.items()},
})


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Path:
    return BATCH.start(request, tmp_path_factory.mktemp("mup_ckpt"), REPO, subprocess_env())


@pytest.mark.parametrize("name", list(RULES))
@BATCH.needs(*(f"{name}_{run}" for name in RULES for run in ("ref", *RESHARD_ON)))
def test_group_multipliers_survive_save_reshard_and_load(runs, name):
    """FSDP2 at 2 ranks saves; 1 process and 3 FSDP2 ranks resume, train and save again: every
    parameter's group keeps the muP lr/wd multipliers (and the depth rule's eps) derived from
    its role and place."""
    rules, ref = RULES[name], runs / f"{name}_ref"
    expected = expected_groups(rules)
    lr_mults = {0.5, 1.0} if rules == MUP else {0.5 * 2**-0.5, 2**-0.5, 1.0}  # × m_L^(α-1)
    assert sorted({m for m, *_ in expected.values()}) == pytest.approx(sorted(lr_mults))
    first = saved_groups(latest_complete(ref / "checkpoints"))
    assert first == expected
    for backend, nproc in RESHARD_ON.items():
        run_dir = runs / f"{name}_{backend}"
        steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
        assert steps == [4, 5], (backend, steps)  # resumed from the step-3 checkpoint
        resaved = latest_complete(run_dir / "checkpoints")
        assert resaved.name == "step_00000005", (backend, nproc)
        assert saved_groups(resaved) == first, (backend, nproc)
