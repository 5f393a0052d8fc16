"""LR-transfer bookkeeping (grid, optima, shift) and the `pretrain mup` command line."""

from __future__ import annotations

import math

import pytest

from pretrain.cli import build_parser
from pretrain.config import load_config
from pretrain.mup.transfer import lr_grid, optima, optimum_shift, read_rows, run_transfer
from tests.conftest import REPO, TINY


def rows_from(curves: dict[tuple[str, int], list[float]], lrs: list[float]) -> list[dict]:
    return [
        {
            "parametrization": p,
            "width": w,
            "lr": lr,
            "seed": 0,
            "steps": 10,
            "train_loss": loss,
            "val_loss": loss,
        }
        for (p, w), losses in curves.items()
        for lr, loss in zip(lrs, losses)
    ]


def test_lr_grid_is_geometric_and_inclusive():
    assert lr_grid(1e-3, 8e-3) == pytest.approx([1e-3, 2e-3, 4e-3, 8e-3])
    assert len(lr_grid(2.44140625e-4, 0.0625)) == 9


def test_optimum_per_width_and_shift_in_grid_steps():
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    rows = rows_from(
        {
            ("mup", 32): [3, 2, 1, 2],
            ("mup", 256): [3, 2, 1.1, 1.2],
            ("sp", 32): [3, 2, 1, 2],
            ("sp", 256): [1, 2, float("nan"), float("nan")],
        },
        lrs,
    )
    best = optima(rows)
    assert best[("mup", 32)] == best[("mup", 256)] == 4e-3
    assert best[("sp", 256)] == 1e-3  # diverged (nan) runs never win
    assert optimum_shift(rows) == {"mup": 0.0, "sp": 2.0}


def test_transfer_appends_rows_and_resumes(tmp_path, caplog):
    caplog.set_level("INFO", logger="pretrain.mup.transfer")  # progress: minutes per run
    cfg = load_config(
        REPO / "configs/vit_digits.yaml",
        [*TINY, "parallel.backend=single", "model.mup.base_width=16"],
    )
    csv_path = tmp_path / "transfer.csv"
    rows = run_transfer(
        cfg, [16, 32], [1e-3], steps=2, csv_path=csv_path, parametrizations=("mup",)
    )
    assert [(r["width"], r["steps"]) for r in rows] == [(16, 2), (32, 2)]
    progress = [r.getMessage() for r in caplog.records if r.name == "pretrain.mup.transfer"]
    assert progress == ["transfer 1/2: mup width=16 lr=0.001 seed=0 (2 steps)",
                        "transfer 2/2: mup width=32 lr=0.001 seed=0 (2 steps)"]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    again = run_transfer(
        cfg, [16, 32], [1e-3], steps=2, csv_path=csv_path, parametrizations=("mup",)
    )
    assert again == read_rows(csv_path) and len(again) == 2  # nothing retrained


def test_mup_subcommands_are_registered():
    parser = build_parser(only="mup")
    args = parser.parse_args(
        ["mup", "coord-check", "configs/vit_digits.yaml", "model.depth=1", "--out", "x"]
    )
    assert args.func.__name__ == "coord_check" and args.widths == [64, 128, 256, 512, 1024]
    args = parser.parse_args(["mup", "transfer", "r.yaml", "--lrs", "1e-3", "2e-3", "--out", "y"])
    assert args.func.__name__ == "transfer" and args.lrs == [1e-3, 2e-3]
