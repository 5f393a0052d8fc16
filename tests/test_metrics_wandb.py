"""The Weights & Biases sink (pretrain/metrics_wandb.py): an offline run directory holds the
run's scalars, config and DiT sample grids (read back from W&B's own run file), and neither an
unreachable service nor a missing wandb package stops a run."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from pretrain.config import load_config
from pretrain.trainer import train
from tests.conftest import REPO, TINY

pytest.importorskip("wandb")

RECIPE = REPO / "configs/dit_digits.yaml"
BASE = [*TINY, "data.name=digits", "parallel.backend=single", "schedule.steps=4",
        "logging.eval_every_steps=2", "logging.eval_batches=1", "model.dit.sample_steps=2",
        "model.dit.samples_per_class=1", "checkpoint.every_steps=0"]


@pytest.fixture(autouse=True)
def wandb_home(tmp_path, monkeypatch):
    """W&B's settings, cache and artifacts under the test's directory, nothing from the user."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def read_wandb_records(run_file: Path) -> list:
    """Records of a .wandb run file: W&B's LevelDB-log framing (32 KiB blocks of
    crc32c/length/type-tagged chunks after a 7-byte header) around protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history(run_dir: Path) -> tuple[list[dict], dict]:
    """(one dict per logged step, the config) of the run's single offline W&B run."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, config = [], {}
    for r in read_wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in r.history.item})
        elif kind in ("run", "config"):  # the run record carries the config given to init
            updates = r.run.config.update if kind == "run" else r.config.update
            config |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}
    return rows, config


def jsonl(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_offline_run_holds_the_scalars_config_and_sample_grids(tmp_path):
    run_dir = tmp_path / "run"
    train(load_config(RECIPE, [*BASE, f"run.dir={run_dir}", "logging.wandb.project=t",
                               "logging.wandb.mode=offline"]))
    rows, config = history(run_dir)
    by_step = {}
    for row in rows:
        by_step.setdefault(row["_step"], {}).update(row)
    for record in jsonl(run_dir):
        logged = by_step[record["step"]]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                assert logged[f"{record['split']}/{key}"] == pytest.approx(value, rel=1e-12), key
    assert "model" in config, str(config)[:500]
    assert config["model"]["family"] == "dit" and config["schedule"]["steps"] == 4
    import numpy as np
    from PIL import Image

    for step in (2, 4):  # the DiT sample grids, pixel for pixel the PNGs the run wrote
        (logged,) = run_dir.glob(f"wandb/offline-run-*/files/media/images/samples_{step}_*.png")
        own = run_dir / f"samples/step_{step:08d}.png"
        assert np.array_equal(np.asarray(Image.open(logged)), np.asarray(Image.open(own)))
    (offline,) = run_dir.glob("wandb/offline-run-*")  # a resumed run reuses this id
    assert offline.name.endswith("-" + (run_dir / "wandb_run_id").read_text().strip())


def test_unreachable_service_falls_back_to_offline_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    run_dir = tmp_path / "run"
    result = train(load_config(RECIPE, [*BASE, f"run.dir={run_dir}", "logging.wandb.project=t",
                                        "logging.wandb.init_timeout_s=5"]))
    assert result["step"] == 4
    rows, _ = history(run_dir)
    assert {r["_step"] for r in rows if "train/loss" in r} == {1, 2, 3, 4}


def test_missing_wandb_package_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a package as absent
    run_dir = tmp_path / "run"
    result = train(load_config(RECIPE, [*BASE, f"run.dir={run_dir}", "logging.wandb.project=t"]))
    assert result["step"] == 4 and "wandb is not installed" in caplog.text
