"""A run resumes from another tool's checkpoint converted with `pretrain ckpt convert`: a plain
`dcp.save` of the recipe's model and AdamW state. It continues from the source's step, says once
that the data order starts again (the source has no position in it), and completes."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from pretrain.cli import main
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, TINY, run_train

RECIPE = str(REPO / "configs" / "vit_digits.yaml")
SOURCE_STEPS = 3


def _plain_dcp_save(path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """What a plain training script writes: the recipe's model trained with torch's AdamW, saved
    with torch.distributed.checkpoint, no process group, no train_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from pretrain.config import load_config
    from pretrain.models import build_model

    cfg = load_config(RECIPE, TINY)
    model = build_model(cfg.model, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(SOURCE_STEPS):
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
        opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": get_model_state_dict(model),
                  "optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(path))
    return model, opt


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.optim.Optimizer]:
    """(the converted checkpoint, the source's model and optimizer)."""
    root = tmp_path_factory.mktemp("foreign")
    model, opt = _plain_dcp_save(root / "plain")
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt", "convert", "--to", "dcp", str(root / "plain"), str(root / "converted")])
    assert exit_info.value.code == 0
    path = root / "converted" / f"step_{SOURCE_STEPS:08d}"
    state = json.loads((path / "train_state.json").read_text())
    assert state["step"] == SOURCE_STEPS and state["foreign"] and "loader" not in state
    return path, model, opt


def test_resume_loads_the_source_model_and_optimizer_state(converted, tmp_path):
    """The run's own optimizer groups (muP lr_mult, decay groups) are kept; each parameter's
    weights, moments and step are the source's, bit for bit."""
    from pretrain.checkpoint import Checkpointer
    from pretrain.config import load_config
    from pretrain.dist import init_distributed
    from pretrain.engines import build_engine
    from pretrain.models import build_model, get_family

    path, source_model, source_opt = converted
    cfg = load_config(RECIPE, [*TINY, "parallel.backend=single"])
    env = init_distributed("cpu")
    model = build_model(cfg.model, seed=1)  # other weights than the source's
    engine = build_engine(model, get_family("vit").loss, env, parallel=cfg.parallel,
                          optim=cfg.optim, model_cfg=cfg.model, global_batch_size=12)
    resumed = Checkpointer(tmp_path, env, 2, False).resume(str(path), engine, seed=0)
    assert resumed is not None and resumed[1]["step"] == SOURCE_STEPS
    loaded = engine.state_dict()
    names = {p: n for n, p in source_model.named_parameters()}
    for name, tensor in source_model.state_dict().items():
        assert torch.equal(loaded["model"][name], tensor), name
    for param, moments in source_opt.state.items():
        mine = loaded["optim"]["state"][names[param]]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(mine[key], moments[key]), (names[param], key)
    assert "lr_mult" in loaded["optim"]["param_groups"][0]  # the run's groups, not the source's


def test_a_run_resumes_from_a_converted_plain_dcp_checkpoint(converted, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(converted[0], run / "checkpoints" / converted[0].name)

    proc = run_train(0, [*TINY, "parallel.backend=single", f"run.dir={run}",
                         f"schedule.steps={SOURCE_STEPS + 2}", "checkpoint.every_steps=0"])
    warned = [line for line in proc.stderr.splitlines() if "holds no data position" in line]
    assert len(warned) == 1 and f"step {SOURCE_STEPS}" in warned[0], proc.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == [SOURCE_STEPS + 1, SOURCE_STEPS + 2]
    status = read_status(run)
    assert status["state"] == "completed" and status["step"] == SOURCE_STEPS + 2, status
