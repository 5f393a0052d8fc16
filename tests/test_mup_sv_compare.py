"""`pretrain mup sv-compare`: two real runs' logged σ_max, the readout read through its
multiplier, the ratio per matrix; bad run directories named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain.cli import main
from pretrain.config import load_config
from pretrain.run_dir import read_metrics
from pretrain.trainer import train
from tests.conftest import REPO, TINY


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sv")
    for width in (32, 64):
        cfg = load_config(REPO / "configs/vit_digits.yaml", [
            *TINY, "parallel.backend=single", f"run.dir={root / f'w{width}'}",
            f"model.width={width}", "model.mup.enabled=true", "model.mup.base_width=32",
            "model.mup.log_singular_values=true", "schedule.steps=3", "checkpoint.every_steps=0",
        ])  # fmt: skip
        train(cfg)
    return root / "w32", root / "w64"


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(["mup", "sv-compare", *args])
    return e.value.code


def last_sv(run_dir: Path) -> dict:
    return [r for r in read_metrics(run_dir) if r["split"] == "sv"][-1]


def test_sv_compare_prints_and_plots_the_ratio_per_matrix(two_runs, tmp_path, capsys):
    a, b = two_runs
    assert cli(str(a), str(b), "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "width 32" in out and "width 64" in out and "ratio: min" in out
    rows = {r["layer"]: r for r in csv_rows(tmp_path / "sv_compare.csv")}
    raw_a, raw_b = last_sv(a), last_sv(b)
    assert set(rows) == set(raw_a) - {"step", "split"}
    assert "head.weight" in rows and "blocks.0.attn.qkv.weight" in rows
    hidden = rows["blocks.0.attn.qkv.weight"]
    assert hidden["sigma_b"] == pytest.approx(raw_b["blocks.0.attn.qkv.weight"])
    # the readout's effective matrix: output_mult/m = 1 at width 32, 1/2 at width 64
    assert rows["head.weight"]["sigma_a"] == pytest.approx(raw_a["head.weight"])
    assert rows["head.weight"]["sigma_b"] == pytest.approx(raw_b["head.weight"] / 2)
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["sigma_b"] / r["sigma_a"])
    assert hidden["expected"] == 1.0 and rows["head.weight"]["expected"] == pytest.approx(0.5**0.5)
    assert (tmp_path / "sv_compare.png").stat().st_size > 5_000


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [{k: v if k == "layer" else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]  # fmt: skip


def test_sv_compare_names_a_run_without_singular_values(two_runs, tmp_path, capsys):
    a, _ = two_runs
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((a / "config.yaml").read_text())
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}))
    assert cli(str(a), str(bare)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bare) in err[0] and "log_singular_values" in err[0]
    assert cli(str(a), str(tmp_path / "missing")) == 2
    assert "no config.yaml" in capsys.readouterr().err
