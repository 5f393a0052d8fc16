"""A run resumes from another tool's checkpoint converted with `pretrain ckpt convert`: a plain
`dcp.save` or a plain DeepSpeed ZeRO-2 save of the recipe's model with AdamW. The run loads the
source's weights, moments and step, keeps its own optimizer groups, says once that the data order
starts again (the source has no position in it), and continues from the source's step."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint.convert import open_source
from pretrain.checkpoint.convert.sources import EXP_AVG, EXP_AVG_SQ
from pretrain.cli import main
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, TINY, run_train, subprocess_env

RECIPE = str(REPO / "configs" / "vit_digits.yaml")
SOURCE_STEPS = 3


def _model_and_batch():
    from pretrain.config import load_config
    from pretrain.models import build_model

    model = build_model(load_config(RECIPE, TINY).model, seed=0)
    torch.manual_seed(0)
    return model, torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))


def _plain_dcp_save(path: Path) -> None:
    """What a plain training script writes: the recipe's model trained with torch's AdamW, saved
    with torch.distributed.checkpoint, no process group, no train_state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    model, images, labels = _model_and_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(SOURCE_STEPS):
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
        opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": get_model_state_dict(model),
                  "optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(path))


DEEPSPEED_SCRIPT = f"""
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
from pretrain.engines.deepspeed import import_deepspeed
from tests.test_checkpoint_foreign_resume import _model_and_batch
deepspeed = import_deepspeed(shm_comm=False)
model, images, labels = _model_and_batch()
cfg = {{"train_micro_batch_size_per_gpu": 8, "zero_optimization": {{"stage": 2}},
       "optimizer": {{"type": "AdamW", "params": {{"lr": 1e-3, "torch_adam": True}}}}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
for _ in range({SOURCE_STEPS}):
    engine.backward(torch.nn.functional.cross_entropy(engine(images), labels))
    engine.step()
engine.save_checkpoint(sys.argv[1])
"""


def _plain_deepspeed_save(path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, str(path), port], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module", params=["dcp", "deepspeed"])
def converted(request, tmp_path_factory) -> tuple[Path, Path]:
    """(the source, its conversion into this project's DCP checkpoint)."""
    root = tmp_path_factory.mktemp(f"foreign_{request.param}")
    source = root / "plain"
    (_plain_dcp_save if request.param == "dcp" else _plain_deepspeed_save)(source)
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt", "convert", "--to", "dcp", str(source), str(root / "converted")])
    assert exit_info.value.code == 0
    path = root / "converted" / f"step_{SOURCE_STEPS:08d}"
    state = json.loads((path / "train_state.json").read_text())
    assert state["step"] == SOURCE_STEPS and state["foreign"] and "loader" not in state
    return source, path


def test_resume_loads_the_source_model_and_optimizer_state(converted, tmp_path):
    """The run's own optimizer groups (muP lr_mult, decay groups) are kept; each parameter's
    weights, moments and step are the source's, bit for bit (read back from the source)."""
    from pretrain.checkpoint import Checkpointer
    from pretrain.config import load_config
    from pretrain.dist import init_distributed
    from pretrain.engines import build_engine
    from pretrain.models import build_model, get_family

    source_dir, path = converted
    cfg = load_config(RECIPE, [*TINY, "parallel.backend=single"])
    env = init_distributed("cpu")
    model = build_model(cfg.model, seed=1)  # other weights than the source's
    engine = build_engine(model, get_family("vit").loss, env, parallel=cfg.parallel,
                          optim=cfg.optim, model_cfg=cfg.model, global_batch_size=12)
    resumed = Checkpointer(tmp_path, env, 2, False).resume(str(path), engine, seed=0)
    assert resumed is not None and resumed[1]["step"] == SOURCE_STEPS
    loaded = engine.state_dict()
    source = open_source(source_dir)
    assert set(source.params) == set(loaded["model"])
    for name in source.params:
        assert torch.equal(loaded["model"][name], source.read(name)), name
        mine = loaded["optim"]["state"][name]
        assert torch.equal(mine["exp_avg"], source.read(name, EXP_AVG)), name
        assert torch.equal(mine["exp_avg_sq"], source.read(name, EXP_AVG_SQ)), name
        assert float(mine["step"]) == float(source.step(name)) == SOURCE_STEPS, name
    assert "lr_mult" in loaded["optim"]["param_groups"][0]  # the run's groups, not the source's


def test_a_run_resumes_from_a_converted_checkpoint(converted, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(converted[1], run / "checkpoints" / converted[1].name)
    proc = run_train(0, [*TINY, "parallel.backend=single", f"run.dir={run}",
                         f"schedule.steps={SOURCE_STEPS + 2}", "checkpoint.every_steps=0"])
    warned = [line for line in proc.stderr.splitlines() if "holds no data position" in line]
    assert len(warned) == 1 and f"step {SOURCE_STEPS}" in warned[0], proc.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == [SOURCE_STEPS + 1, SOURCE_STEPS + 2]
    status = read_status(run)
    assert status["state"] == "completed" and status["step"] == SOURCE_STEPS + 2, status
