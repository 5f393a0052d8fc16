"""The end-to-end toy study on CPU: plan -> train tiny ViTs -> collect -> fit -> plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pretrain.cli import main

pytestmark = pytest.mark.slow


def test_study_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "study"
    argv = ["scaling", "study", "--base", "configs/vit_digits.yaml", "--budgets", "1e9", "3e9",
            "--points", "3", "--widths", "16", "32", "--depths", "1", "2", "--min-steps", "5",
            "--evals", "3", "--out", str(out), "--boot", "20", "--jobs", "1", "--target", "1e11",
            "--set", "data.format=memory", "--set", "data.name=digits"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "6 of 6 runs completed" in printed

    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
    for r in rows:  # FLOPs come from the model's own accounting and land near the budget
        assert float(r["flops"]) == pytest.approx(1e9 if "C1e9" in r["name"] else 3e9, rel=0.15)
        assert r["loss_source"].startswith("val")
    fits = json.loads((out / "fits.json").read_text())
    assert fits["n_runs"] == 6 and fits["n_budgets"] == 2
    # every approach either fitted or says why not
    for key, short in [("approach3_parametric", "approach3"), ("approach2_isoflop", "approach2"),
                       ("approach1_envelope", "approach1")]:  # fmt: skip
        assert fits[key] is not None or short in fits["skipped"]
    for f in (
        "sweep.yaml",
        "report.md",
        "loss_vs_compute.png",
        "isoflop.png",
        "optimal_allocation.png",
    ):
        assert (out / f).exists(), f

    # running again skips the completed runs
    with pytest.raises(SystemExit):
        main(argv)
    assert "6 of 6 runs completed" in capsys.readouterr().out
