"""Checkpoint content checksums (pretrain/checkpoint/integrity.py): computed while the files are
written, checked before a resume loads them; a corrupt or unloadable checkpoint is skipped for
the previous one, and the resumed run ends bitwise where an uninterrupted run does."""

from __future__ import annotations

import json
import logging
import re
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.api import CheckpointException

from pretrain.checkpoint import (
    MANIFEST,
    check_complete,
    checkpointer,
    integrity,
    list_checkpoints,
    read_manifest,
    read_model_tensors,
    verify_checkpoint,
)
from pretrain.cli import main as pretrain_main
from tests.conftest import TINY, run_train
from tests.test_checkpoint_commit import run_inprocess

EVERY_2 = ("checkpoint.every_steps=2", "checkpoint.keep_last=5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 8-step run with checkpoints at steps 2, 4, 6 and 8."""
    run_dir = tmp_path_factory.mktemp("integrity") / "reference"
    run_inprocess(run_dir, "schedule.steps=8", *EVERY_2)
    return run_dir


def stopped_at_6(reference: Path, tmp_path: Path) -> Path:
    """The reference run as it stood after step 6 (checkpoints 2, 4, 6)."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints/step_00000008")
    return run_dir


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def final_params_equal(a: Path, b: Path) -> bool:
    want = read_model_tensors(a / "checkpoints/step_00000008")
    got = read_model_tensors(b / "checkpoints/step_00000008")
    return want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_manifest_lists_a_checksum_of_every_file(reference):
    for ckpt in list_checkpoints(reference / "checkpoints"):
        manifest = read_manifest(ckpt)
        assert manifest["checksum"] == integrity.ALGORITHM
        assert manifest["checksums"].keys() == manifest["files"].keys()
        names = set(manifest["files"])
        assert {"train_state.json", "model/.metadata", "rng/rank_00000.safetensors"} <= names
        for rel, digest in manifest["checksums"].items():
            assert integrity.digest_file(ckpt / rel) == digest, rel


def test_save_hashes_while_writing_and_reads_nothing_back(tmp_path, monkeypatch):
    """Every file of a DCP checkpoint is hashed as it is written: the commit reads none back."""
    read_back: list[Path] = []
    real = integrity.digest_file
    monkeypatch.setattr(integrity, "digest_file", lambda p: read_back.append(p) or real(p))
    run_inprocess(tmp_path / "run", "schedule.steps=2", "checkpoint.every_steps=2")
    assert read_back == []
    (ckpt,) = list_checkpoints(tmp_path / "run/checkpoints")
    assert verify_checkpoint(ckpt) is None


@pytest.mark.parametrize("victim", ["model/__0_0.distcp", "train_state.json", "model/.metadata"])
def test_one_flipped_byte_falls_back_to_previous_checkpoint_bitwise(
    reference, tmp_path, caplog, victim
):
    run_dir = stopped_at_6(reference, tmp_path)
    ckpt = run_dir / "checkpoints/step_00000006"
    bad = ckpt / victim
    flip_byte(bad)
    assert check_complete(ckpt) is None  # the same size: only the content tells
    with caplog.at_level(logging.INFO):
        result = run_inprocess(run_dir, "schedule.steps=8", *EVERY_2)
    assert result["step"] == 8
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipping checkpoint" in m and str(bad) in m and "corrupt" in m for m in warnings)
    assert any("resumed from" in r.message and "step_00000004 at step 4" in r.message
               for r in caplog.records)
    assert final_params_equal(reference, run_dir)


def test_checkpoint_that_fails_to_load_for_any_reason_is_skipped(
    reference, tmp_path, caplog, monkeypatch
):
    """torch's CheckpointException derives from BaseException: still a fallback, not a crash."""
    run_dir = stopped_at_6(reference, tmp_path)
    real = checkpointer.load_engine_state

    def load_or_fail(engine, path, **kwargs):
        if "step_00000006" in str(path):
            raise CheckpointException("load failed", {0: (RuntimeError("forced: bad record"),
                                                         traceback.StackSummary())})
        return real(engine, path, **kwargs)

    monkeypatch.setattr(checkpointer, "load_engine_state", load_or_fail)
    with caplog.at_level(logging.WARNING):
        run_inprocess(run_dir, "schedule.steps=8", *EVERY_2)
    assert any("step_00000006" in r.message and "forced: bad record" in r.message
               for r in caplog.records)
    assert final_params_equal(reference, run_dir)


def test_manifest_without_checksums_is_size_checked_with_one_warning(
    reference, tmp_path, caplog, monkeypatch
):
    """Checkpoints written before checksums existed still resume (their sizes are checked)."""
    run_dir = stopped_at_6(reference, tmp_path)
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        manifest = read_manifest(ckpt)
        del manifest["checksum"], manifest["checksums"]
        (ckpt / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(integrity, "_warned_size_only", False)
    with caplog.at_level(logging.WARNING):
        run_inprocess(run_dir, "schedule.steps=8", *EVERY_2)
    size_only = [r for r in caplog.records if "without checksums" in r.message]
    assert len(size_only) == 1
    assert final_params_equal(reference, run_dir)


def ckpt_verify(path: Path) -> int:
    with pytest.raises(SystemExit) as done:
        pretrain_main(["ckpt", "verify", str(path)])
    return done.value.code


def test_ckpt_verify_names_the_first_bad_file(reference, tmp_path, capsys):
    run_dir = stopped_at_6(reference, tmp_path)
    ckpt = run_dir / "checkpoints/step_00000006"
    assert ckpt_verify(ckpt) == 0
    assert "verified" in capsys.readouterr().out
    shard = ckpt / "model/__0_1.distcp"
    flip_byte(shard)
    assert ckpt_verify(ckpt) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "corrupt" in err
    shard.unlink()
    assert ckpt_verify(ckpt) == 2
    assert f"{shard} is missing" in capsys.readouterr().err


@pytest.mark.slow
def test_ranks_agree_on_the_fallback_when_only_one_rank_sees_the_damage(tmp_path):
    """2-rank FSDP2: each rank hashes its share of the files; the corrupt file is in rank 1's
    share, yet both ranks skip the checkpoint and load the previous one (no hang, bitwise)."""
    common = [*TINY, "parallel.backend=fsdp2", "schedule.steps=8", *EVERY_2]
    reference = tmp_path / "reference"
    run_train(2, [*common, f"run.dir={reference}"])
    run_dir = stopped_at_6(reference, tmp_path)
    ckpt = run_dir / "checkpoints/step_00000006"
    names = sorted(read_manifest(ckpt)["files"])
    victim = next(n for i, n in enumerate(names) if i % 2 == 1 and n.endswith(".distcp"))
    flip_byte(ckpt / victim)
    proc = run_train(2, [*common, f"run.dir={run_dir}"])
    assert re.search(rf"skipping checkpoint \S+step_00000006: \S+{re.escape(victim)} is corrupt",
                     proc.stderr)
    assert re.search(r"resumed from \S+step_00000004 at step 4", proc.stderr)
    assert final_params_equal(reference, run_dir)
