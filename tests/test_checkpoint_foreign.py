"""Checkpoints written by other tools: a plain `dcp.save` script's directory and a DeepSpeed save
directory with a `latest` file are read by `pretrain ckpt inspect|convert|reshard|export`;
buffers, frozen parameters and integer dtypes survive; a failed conversion leaves nothing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from pretrain.checkpoint.convert import convert, open_source
from pretrain.checkpoint.convert.sources import EXP_AVG, EXP_AVG_SQ
from pretrain.cli import main
from pretrain.run_dir import one_line_error


def _plain_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A BatchNorm (float and int64 buffers) and a frozen bias, trained 3 AdamW steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    model[1].num_batches_tracked.fill_(301)  # 301 is not a bf16 number
    return model, opt


@pytest.fixture(scope="module")
def plain_dcp(tmp_path_factory) -> tuple[Path, nn.Module, torch.optim.Optimizer]:
    """What a plain training script saves with torch.distributed.checkpoint, no process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    model, opt = _plain_model()
    path = tmp_path_factory.mktemp("plain") / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": get_model_state_dict(model),
                  "optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(path))
    return path, model, opt


def _cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


def test_export_keeps_buffers_frozen_parameters_and_integer_dtypes(plain_dcp, tmp_path):
    path, model, _ = plain_dcp
    out = tmp_path / "w.safetensors"
    assert _cli("ckpt", "export", str(path), str(out), "--dtype", "bf16") == 0
    got, want = load_file(str(out)), model.state_dict()
    assert sorted(got) == sorted(want)  # BatchNorm buffers and the frozen bias included
    assert got["1.num_batches_tracked"].dtype == torch.int64
    assert int(got["1.num_batches_tracked"]) == 301
    for name, tensor in want.items():
        if tensor.is_floating_point():
            assert torch.equal(got[name], tensor.bfloat16()), name


def test_plain_dcp_converts_with_its_optimizer_state(plain_dcp, tmp_path, capsys):
    path, model, opt = plain_dcp
    assert _cli("ckpt", "inspect", str(path)) == 0
    assert "1.running_mean" in capsys.readouterr().out
    assert _cli("ckpt", "convert", "--to", "dcp", str(path), str(tmp_path / "dcp")) == 0
    assert _cli("ckpt", "convert", "--to", "deepspeed", str(path), str(tmp_path / "ds")) == 0
    names = {p: n for n, p in model.named_parameters()}
    for out in (tmp_path / "dcp" / "step_00000003", tmp_path / "ds" / "step_00000003"):
        source = open_source(out)
        assert json.loads((out / "train_state.json").read_text())["step"] == 3
        for param, state in opt.state.items():
            name = names[param]
            assert torch.equal(source.read(name), param.detach()), (out, name)
            assert torch.equal(source.read(name, EXP_AVG), state["exp_avg"]), (out, name)
            assert torch.equal(source.read(name, EXP_AVG_SQ), state["exp_avg_sq"]), (out, name)
            assert float(source.step(name)) == 3.0
    converted = open_source(tmp_path / "dcp" / "step_00000003")
    for name, tensor in model.state_dict().items():  # buffers and the frozen bias carried
        assert torch.equal(converted.read(name), tensor), name
    assert not converted.optimized("0.bias") and not converted.optimized("1.running_var")


def test_a_deepspeed_save_dir_with_latest_is_followed(plain_dcp, tmp_path, capsys):
    path, model, _ = plain_dcp
    assert _cli("ckpt", "convert", "--to", "deepspeed", str(path), str(tmp_path / "c")) == 0
    save = tmp_path / "save"
    save.mkdir()
    (tmp_path / "c" / "step_00000003" / "model").rename(save / "global_step3")
    (save / "latest").write_text("global_step3\n")
    assert _cli("ckpt", "inspect", str(save)) == 0
    assert "2.weight" in capsys.readouterr().out
    assert _cli("ckpt", "reshard", str(save), str(tmp_path / "r")) == 0
    (save / "latest").write_text("../elsewhere")
    assert _cli("ckpt", "inspect", str(save)) == 2
    assert "latest" in capsys.readouterr().err


def test_a_failed_conversion_leaves_nothing(tmp_path):
    """A checkpoint whose weight file is truncated opens (metadata, optimizer steps and groups
    are fine) and fails half-way through the conversion: no folder is left behind."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from pretrain.checkpoint.dcp_io import read_metadata

    model, opt = _plain_model()
    path = tmp_path / "one_file_per_tensor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": get_model_state_dict(model),
                  "optimizer": get_optimizer_state_dict(model, opt)},
                 storage_writer=dcp.FileSystemWriter(str(path), single_file_per_rank=False))
    files = {i.fqn: s.relative_path for i, s in read_metadata(path).storage_data.items()}
    weight = path / files["model.2.weight"]
    assert sum(f == files["model.2.weight"] for f in files.values()) == 1
    weight.write_bytes(weight.read_bytes()[:20])
    dst = tmp_path / "new" / "deeper" / "dst"
    with pytest.raises(BaseException) as failure:  # DCP's save wraps the reader's error
        convert(path, dst, "dcp")
    assert "model.2.weight" in one_line_error(failure.value)
    assert not (tmp_path / "new").exists()


DEEPSPEED_SCRIPT = """
import os, sys, torch, torch.nn as nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
from pretrain.engines.deepspeed import import_deepspeed
deepspeed = import_deepspeed(shm_comm=False)
for stage in (2, 3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[0].bias.requires_grad_(False)
    cfg = {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": stage},
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=trained, config=cfg)
    for _ in range(3):
        engine.backward(engine(torch.randn(16, 4)).square().mean())
        engine.step()
    engine.module[1].num_batches_tracked.fill_(301)
    engine.save_checkpoint(os.path.join(sys.argv[1], f"zero{stage}"))
"""


@pytest.fixture(scope="module")
def plain_deepspeed(tmp_path_factory) -> Path:
    """ZeRO-2 and ZeRO-3 save directories (with `latest`) of a plain DeepSpeed script: a
    BatchNorm and a frozen bias outside the optimizer's partitions."""
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO, subprocess_env

    root = tmp_path_factory.mktemp("ds")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_SCRIPT, str(root), port], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_export_equals_zero_to_fp32_with_buffers_and_frozen(plain_deepspeed, tmp_path,
                                                                       stage):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    save = plain_deepspeed / f"zero{stage}"
    out = tmp_path / "w.safetensors"
    assert _cli("ckpt", "export", str(save), str(out)) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = get_fp32_state_dict_from_zero_checkpoint(str(save))
    got = load_file(str(out))
    assert sorted(got) == sorted(want) and len(got) == 9
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert int(got["1.num_batches_tracked"]) == 301
    assert _cli("ckpt", "convert", "--to", "dcp", str(save), str(tmp_path / "c")) == 0
    converted = open_source(tmp_path / "c" / "step_00000003")
    assert torch.equal(converted.read("0.bias"), want["0.bias"])
