"""`pretrain data build/inspect/index` end to end, and the digits shards matching the in-memory
digits the default demo uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data_pipeline import DataConfig, build_loader
from data_pipeline.memory import load_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m pretrain data ...` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pretrain", "data", *args], env=env,
                          capture_output=True, text=True, check=False)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """The same command in this process (a subprocess per call costs seconds of imports)."""
    from pretrain.cli import main

    def run(*args: str) -> Result:
        try:
            main(["data", *args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001 - reported like the console script would
            code, _ = 1, print(e, file=sys.stderr)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def test_help_texts(cli):
    assert subprocess_cli("build", "--help").returncode == 0
    for args in (
        ["--help"],
        ["build", "--help"],
        ["build", "digits", "--help"],
        ["inspect", "--help"],
    ):
        out = cli(*args)
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
    assert "--shard-samples" in cli("build", "text", "--help").stdout


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_digits_shards_match_memory_digits(tmp_path, fmt, cli):
    out = (subprocess_cli if fmt == "wds" else cli)(
        "build", "digits", "--format", fmt, "--out", str(tmp_path), "--shard-samples", "300"
    )
    assert out.returncode == 0, out.stderr
    assert "train: 1438 samples" in out.stdout and "val: 359 samples" in out.stdout
    cfg = DataConfig(
        format=fmt,
        train_url=str(tmp_path / "train"),
        val_url=str(tmp_path / "val"),
        global_batch_size=len(load_arrays(DataConfig(), "val")["label"]),
        num_workers=0,
        eval_batch_size=359,
    )
    (batch,) = list(build_loader(cfg, 0, 1, "val"))
    memory = load_arrays(DataConfig(), "val")
    assert torch.equal(batch["label"], torch.from_numpy(memory["label"]))
    np.testing.assert_allclose(batch["image"].numpy(), memory["image"], atol=2 / 255)
    shown = cli("inspect", str(tmp_path / "train"), "--verify")
    assert shown.returncode == 0, shown.stderr
    assert "1438 samples" in shown.stdout and "image L (8, 8)" in shown.stdout


def test_build_text_and_images_and_numpy(tmp_path, cli):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": f"doc {i} " * (i + 1)}) for i in range(40)))
    out = cli(
        "build",
        "text",
        "--src",
        str(docs),
        "--format",
        "wds",
        "--out",
        str(tmp_path / "t"),
        "--seq-len",
        "16",
        "--val-fraction",
        "0.1",
    )
    assert out.returncode == 0, out.stderr
    batch = next(
        iter(
            build_loader(
                DataConfig(format="wds", train_url=str(tmp_path / "t/train"), global_batch_size=2),
                0,
                1,
            )
        )
    )
    assert batch["tokens"].shape == (2, 16)

    from PIL import Image

    for label, cls in enumerate(("cat", "dog")):
        os.makedirs(tmp_path / "img" / cls)
        for i in range(3):
            Image.new("RGB", (5 + i, 7), (label * 100, i, 0)).save(
                tmp_path / "img" / cls / f"{i}.png"
            )
    out = cli(
        "build",
        "images",
        "--src",
        str(tmp_path / "img"),
        "--format",
        "mds",
        "--size",
        "6",
        "--out",
        str(tmp_path / "i"),
        "--val-fraction",
        "0",
    )
    assert out.returncode == 0, out.stderr
    batch = next(
        iter(
            build_loader(
                DataConfig(
                    format="mds",
                    train_url=str(tmp_path / "i/train"),
                    global_batch_size=6,
                    shuffle=False,
                ),
                0,
                1,
            )
        )
    )
    assert batch["image"].shape == (6, 3, 6, 6) and batch["label"].tolist() == [0, 0, 0, 1, 1, 1]

    np.save(tmp_path / "x.npy", np.zeros((10, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.arange(10))
    out = cli(
        "build",
        "numpy",
        "--images",
        str(tmp_path / "x.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
        "--format",
        "wds",
        "--out",
        str(tmp_path / "n"),
    )
    assert out.returncode == 0, out.stderr
    bad = cli(
        "build",
        "images",
        "--src",
        str(tmp_path / "nowhere"),
        "--format",
        "wds",
        "--out",
        str(tmp_path / "z"),
    )
    assert bad.returncode != 0
