"""Checkpoint conversion (`pretrain ckpt`, pretrain/checkpoint/convert/): exact format round
trips, safetensors export/import, bad input, bounded memory.

These run in one process on checkpoints the real trainer wrote (single backend, DCP); the
DeepSpeed-written checkpoints are covered in tests/test_deepspeed.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrain.checkpoint import UnsafeCheckpointError, check_complete, read_model_tensors
from pretrain.checkpoint.convert import (
    CheckpointFormatError,
    CheckpointMismatchError,
    convert,
    export_safetensors,
    import_safetensors,
    open_source,
)
from pretrain.checkpoint.convert.sources import KINDS
from pretrain.cli import main as cli_main
from pretrain.config import load_config
from pretrain.models import build_model
from pretrain.trainer import train
from tests.conftest import REPO, TINY, subprocess_env

RECIPE = REPO / "configs/vit_digits.yaml"


def tiny_cfg(run_dir: Path, *overrides: str):
    return load_config(RECIPE, [*TINY, "parallel.backend=single", f"run.dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def dcp_ckpt(tmp_path_factory) -> Path:
    """A DCP checkpoint (with AdamW state) that the trainer wrote at step 4."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_cfg(run_dir, "schedule.steps=4", "checkpoint.every_steps=4"))
    return run_dir / "checkpoints/step_00000004"


def assert_same_state(a_path: Path, b_path: Path) -> None:
    a, b = open_source(a_path), open_source(b_path)
    assert sorted(a.params) == sorted(b.params)
    for name in a.params:
        for kind in KINDS:
            assert torch.equal(a.read(name, kind), b.read(name, kind)), (name, kind)
        assert torch.equal(a.step(name), b.step(name)), name
    strip = [{k: v for k, v in g.items() if k != "params"} for g in a.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != "params"} for g in b.param_groups]
    assert [g["params"] for g in a.param_groups] == [g["params"] for g in b.param_groups]


def test_dcp_to_deepspeed_and_back_is_exact(dcp_ckpt, tmp_path):
    """Weights, both Adam moments, steps and param groups (lr_mult, wd_mult) survive DCP ->
    DeepSpeed universal -> DCP bit for bit; the results are complete checkpoints."""
    ds = convert(dcp_ckpt, tmp_path / "ds", "deepspeed")
    back = convert(ds, tmp_path / "back", "dcp")
    assert ds.name == back.name == "step_00000004"
    assert check_complete(ds) is None and check_complete(back) is None
    assert_same_state(dcp_ckpt, ds)
    assert_same_state(dcp_ckpt, back)
    state = json.loads((back / "train_state.json").read_text())
    original = json.loads((dcp_ckpt / "train_state.json").read_text())
    assert (
        state["backend"] == "fsdp2"
        and json.loads((ds / "train_state.json").read_text())["backend"] == "deepspeed"
    )
    assert state["loader"] == original["loader"] and state["step"] == 4


def _logits(weights: dict[str, torch.Tensor], cfg) -> torch.Tensor:
    model = build_model(cfg.model)
    model.load_state_dict(weights, strict=True)
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(images)


def test_safetensors_export_load_gives_identical_logits(dcp_ckpt, tmp_path):
    cfg = tiny_cfg(tmp_path)
    out = export_safetensors(dcp_ckpt, tmp_path / "w.safetensors")
    exported = load_file(str(out))
    original = read_model_tensors(dcp_ckpt)
    assert torch.equal(_logits(exported, cfg), _logits(original, cfg))
    bf16 = load_file(
        str(export_safetensors(dcp_ckpt, tmp_path / "w_bf16.safetensors", dtype=torch.bfloat16))
    )
    assert all(
        bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], original[k].bfloat16())
        for k in original
    )


def test_import_starts_a_run_from_exported_weights(dcp_ckpt, tmp_path):
    weights = export_safetensors(dcp_ckpt, tmp_path / "w.safetensors")
    cfg = tiny_cfg(tmp_path / "new_run", "schedule.steps=2")
    ckpt = import_safetensors(weights, tmp_path / "imported", cfg)
    assert ckpt.name == "step_00000000" and check_complete(ckpt) is None
    original = read_model_tensors(dcp_ckpt)
    imported = read_model_tensors(ckpt)
    assert all(torch.equal(original[k], imported[k]) for k in original)
    result = train(tiny_cfg(tmp_path / "new_run", "schedule.steps=2", f"checkpoint.resume={ckpt}"))
    assert result["step"] == 2


def test_import_into_another_model_lists_first_mismatches_with_both_shapes(
    dcp_ckpt, tmp_path, capsys
):
    weights = export_safetensors(dcp_ckpt, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointMismatchError) as err:
        import_safetensors(weights, tmp_path / "x", tiny_cfg(tmp_path, "model.width=48"))
    assert "shape pos_embed: checkpoint (1, 17, 32), model (1, 17, 48)" in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        cli_main(
            [
                "ckpt",
                "import",
                str(weights),
                str(tmp_path / "y"),
                "--config",
                str(RECIPE),
                *TINY,
                "model.depth=3",
            ]
        )
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "missing blocks.2.norm1.weight: model (32,), not in the checkpoint" in message
    assert not (tmp_path / "y").exists()


def test_missing_shard_file_is_named(dcp_ckpt, tmp_path):
    ckpt = convert(dcp_ckpt, tmp_path / "ds", "deepspeed")
    victim = ckpt / "model/zero/head.weight/exp_avg.pt"
    victim.unlink()
    with pytest.raises(CheckpointFormatError, match=str(victim)):
        open_source(ckpt).read("head.weight", "exp_avg")
    dcp_copy = tmp_path / "dcp"
    shutil.copytree(dcp_ckpt / "model", dcp_copy)
    shard = sorted(dcp_copy.glob("*.distcp"))[0]
    shard.unlink()
    with pytest.raises(CheckpointFormatError, match=shard.name):
        open_source(dcp_copy)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/pretrain_ckpt_pwned"),))


def test_file_needing_full_unpickling_is_refused_with_explanation(dcp_ckpt, tmp_path):
    marker = Path("/tmp/pretrain_ckpt_pwned")
    marker.unlink(missing_ok=True)
    ckpt = convert(dcp_ckpt, tmp_path / "ds", "deepspeed")
    torch.save({"param": _Exploit()}, ckpt / "model/zero/head.weight/fp32.pt")
    with pytest.raises(UnsafeCheckpointError, match="beyond weights_only.*arbitrary code"):
        open_source(ckpt)
    assert not marker.exists()


def test_inspect_reports_tensors_step_backend_and_size(dcp_ckpt, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["ckpt", "inspect", str(dcp_ckpt), "--json"])
    assert exit_.value.code == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "dcp" and info["step"] == 4 and info["backend"] == "single"
    assert info["world_size"] == 1 and info["optimizer_state"] and info["bytes_on_disk"] > 0
    assert {"name": "head.weight", "shape": [10, 32], "dtype": "float32"} in info["tensors"]


MEMORY_SCRIPT = """
import json, sys
from pathlib import Path
from pretrain.checkpoint.convert.sinks import largest_tensor_bytes, total_bytes, write_dcp
from pretrain.checkpoint.convert.sources import open_source
from pretrain.checkpoint.convert.synthetic import SyntheticSource
from pretrain.checkpoint.convert import operations
mode, src, dst = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if mode == "make":
    source = SyntheticSource(count=48, shape=(2048, 1024))
    write_dcp(source, dst, sync=False)
    info = {"total": total_bytes(source, True), "largest": largest_tensor_bytes(source)}
elif mode == "deepspeed":
    from pretrain.checkpoint.convert.sinks import write_universal
    write_universal(open_source(src), dst, global_steps=7)
    info = {}
else:
    operations.export_safetensors(src, dst)
    info = {}
from pretrain.metrics import peak_rss_bytes
info["peak_rss"] = peak_rss_bytes()
print(json.dumps(info))
"""


def _measure(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_conversion_of_a_checkpoint_far_larger_than_the_bound_stays_under_it(tmp_path):
    """1.2 GB of weights + Adam moments in 8 MB tensors; the bound is 3 x 8 MB + 500 MB. Each
    conversion runs in its own process, which reports its own peak RSS."""
    made = _measure("make", "-", str(tmp_path / "dcp"))
    bound = 3 * made["largest"] + 500 * 2**20
    assert made["total"] > 2 * bound
    to_ds = _measure("deepspeed", str(tmp_path / "dcp"), str(tmp_path / "ds"))
    to_st = _measure("export", str(tmp_path / "ds"), str(tmp_path / "w.safetensors"))
    for name, r in (("dcp->deepspeed", to_ds), ("deepspeed->safetensors", to_st)):
        assert r["peak_rss"] < bound, (
            f"{name}: peak RSS {r['peak_rss'] / 2**20:.0f} MiB >= {bound / 2**20:.0f} MiB"
        )
    check = open_source(tmp_path / "ds")
    from pretrain.checkpoint.convert.synthetic import SyntheticSource

    ref = SyntheticSource(count=48, shape=(2048, 1024))
    for name in ("layers.0.weight", "layers.47.weight"):
        for kind in KINDS:
            assert torch.equal(check.read(name, kind), ref.read(name, kind))


def test_import_maps_a_wrapper_prefix_onto_the_model(dcp_ckpt, tmp_path, capsys):
    """Weights saved from a wrapper (`module.` keys) import with --strip-prefix, equal."""
    from safetensors.torch import save_file

    exported = load_file(str(export_safetensors(dcp_ckpt, tmp_path / "w.safetensors")))
    wrapped = tmp_path / "wrapped.safetensors"
    save_file({f"module.{k}": v for k, v in exported.items()}, str(wrapped))

    def run_import(dst: str, *extra: str) -> int:
        with pytest.raises(SystemExit) as exit_:
            cli_main(
                [
                    "ckpt",
                    "import",
                    str(wrapped),
                    str(tmp_path / dst),
                    *extra,
                    "--config",
                    str(RECIPE),
                    *TINY,
                ]
            )
        return exit_.value.code

    assert run_import("plain") == 2 and "module." in capsys.readouterr().err
    assert run_import("stripped", "--strip-prefix", "module.") == 0
    imported = read_model_tensors(tmp_path / "stripped" / "step_00000000")
    assert sorted(imported) == sorted(exported)
    assert all(torch.equal(imported[k], exported[k]) for k in exported)


def test_peak_rss_of_a_child_is_its_own():
    """The memory bounds above read each conversion's own peak: a child started from a large
    process (the test runner holds ~800 MB in a full run) must not report the parent's RSS, as
    getrusage().ru_maxrss does after fork/vfork + exec."""
    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page
    code = "from pretrain.metrics import peak_rss_bytes; print(peak_rss_bytes())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, check=True)
    assert int(proc.stdout) < 500 * 2**20, f"child reports {int(proc.stdout) / 2**20:.0f} MiB"
    del ballast
