"""LR-transfer bookkeeping (grid, optima, shift) and the `pretrain mup` command line."""

from __future__ import annotations

import math

import pytest

from pretrain.cli import build_parser
from pretrain.config import load_config
from pretrain.mup.transfer import (
    FIELDS,
    at_grid_edge,
    format_report,
    loss_at_base_optimum,
    lr_grid,
    optima,
    optimum_shift,
    read_rows,
    run_transfer,
    seed_shifts,
)
from tests.conftest import REPO, TINY


def rows_from(
    curves: dict[tuple[str, int], list[float]], lrs: list[float], seed: int = 0
) -> list[dict]:
    return [
        {
            "parametrization": p,
            "width": w,
            "depth": 2,
            "lr": lr,
            "seed": seed,
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
    # sp at 256 is best at the smallest LR swept: its shift is only a lower bound, and said so
    assert at_grid_edge(rows) == {("sp", 256)}
    report = format_report(rows)
    assert "256: 0.001 (edge)" in report and report.count("(edge)") == 2  # the flag + its note


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


def test_each_seed_has_its_own_shift_and_the_transferred_loss_is_read_at_the_base_optimum():
    """Two seeds whose optima wander in opposite directions: the mean curve says 0 steps, each
    seed alone moves 1 (the median over seeds the issue's bar reads)."""
    lrs = [1e-3, 2e-3, 4e-3]
    rows = rows_from({("mup", 32): [2, 1, 2], ("mup", 256): [0.8, 0.9, 1.4]}, lrs, seed=0)
    rows += rows_from({("mup", 32): [2, 1, 2], ("mup", 256): [1.4, 0.9, 0.8]}, lrs, seed=1)
    rows += rows_from({("mup", 32): [2, 1, 2], ("mup", 256): [1.2, 1.0, 1.1]}, lrs, seed=2)
    assert optimum_shift(rows) == {"mup": 0.0}
    assert seed_shifts(rows) == {"mup": [1.0, 1.0, 0.0]}
    at_base = loss_at_base_optimum(rows)  # the base (width 32) optimum is 2e-3 in every seed
    assert at_base[("mup", 32)] == 1.0
    assert at_base[("mup", 256)] == pytest.approx((0.9 + 0.9 + 1.0) / 3)
    nan = float("nan")  # every base-width run diverged: nothing to transfer, not the next size's
    diverged = rows_from({("sp", 32): [nan, nan, nan], ("sp", 256): [1.0, 0.5, 2.0]}, lrs)
    at_base = loss_at_base_optimum(rows + diverged)
    assert math.isnan(at_base[("sp", 32)]) and math.isnan(at_base[("sp", 256)])


def test_report_only_rereads_merged_shards_without_training(tmp_path, capsys):
    """Shards of one sweep run in parallel are concatenated, then reported without a rerun."""
    import csv
    import json

    from pretrain.cli import main

    lrs = [1e-3, 2e-3, 4e-3]
    rows = rows_from({("mup", 32): [2, 1, 2], ("mup", 64): [2, 0.8, 2]}, lrs)
    rows += rows_from({("sp", 32): [2, 1, 2], ("sp", 64): [0.9, 1.5, 2]}, lrs)
    with open(tmp_path / "transfer.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({**r, "steps": 7} for r in rows)
    argv = ["mup", "transfer", str(REPO / "configs/mup_vit_digits.yaml"), "--widths", "32", "64",
            "--steps", "7", "--report-only", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    summary = json.loads((tmp_path / "transfer.json").read_text())
    assert summary["shift_grid_steps"] == {"mup": 0.0, "sp": 1.0}
    assert summary["loss_at_base_optimum"]["sp/64"] == 1.5
    assert len(read_rows(tmp_path / "transfer.csv")) == 12  # nothing trained, nothing appended
    assert (tmp_path / "transfer.png").stat().st_size > 0
    with pytest.raises(SystemExit) as refused:  # no rows at these steps: one line, exit 2
        main([*argv[:-3], "--steps", "8", "--report-only", "--out", str(tmp_path)])
    assert refused.value.code == 2
    assert "no rows for these widths and steps" in capsys.readouterr().err
    with open(tmp_path / "transfer.csv", "a") as f:
        f.write("mup,64,2,fast,0,7,1.0,1.0\n")  # a hand-edited row: named, one line, exit 2
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "transfer.csv: line 14: not a transfer row" in err and "Traceback" not in err


def attention_of(cfg) -> tuple[int, float]:
    """(head count, attention logit scale) of the model `cfg` builds."""
    from pretrain.models import build_model

    attn = [m for m in build_model(cfg.model).modules() if hasattr(m, "head_dim")]
    return attn[0].num_heads, attn[0].scale


def test_heads_scale_keeps_the_base_head_dim_and_the_base_attention_scale():
    """--heads scale: heads grow with width, the head dim and muP's attention scale stay the
    recipe's (as `pretrain scaling plan` plans); --heads fixed: the head dim grows instead."""
    from pretrain.mup.runner import variant

    cfg = load_config(REPO / "configs/mup_vit_translated.yaml", [])  # base 32, 4 heads of 8
    base_heads, base_scale = attention_of(variant(cfg, 32, "mup", heads="scale"))
    assert (base_heads, base_scale) == (4, pytest.approx(8**-0.5))
    assert attention_of(variant(cfg, 32, "mup")) == (base_heads, base_scale)
    for width in (64, 512):
        heads, scale = attention_of(variant(cfg, width, "mup", heads="scale"))
        assert heads == width // 8 and scale == pytest.approx(base_scale)
        heads, scale = attention_of(variant(cfg, width, "mup", heads="fixed"))
        head_dim = width // 4
        assert heads == 4 and scale == pytest.approx(8**0.5 / head_dim)  # muP's 1/d rule
    assert attention_of(variant(cfg, 512, "sp", heads="scale")) == (64, pytest.approx(8**-0.5))
    with pytest.raises(ValueError, match="not a multiple of the recipe's head dim 8"):
        variant(cfg, 36, "mup", heads="scale")
    from pretrain.mup.transfer import for_heads

    rows = [{**r, "num_heads": 4} for r in rows_from({("mup", 36): [1.0], ("mup", 32): [1.0]},
                                                       [1e-3])]  # 4 heads at 36: rule "fixed"
    assert [r["width"] for r in for_heads(rows, cfg, "fixed")] == [36, 32]
    assert [r["width"] for r in for_heads(rows, cfg, "scale")] == [32]


def test_a_sweep_of_one_head_rule_neither_reuses_nor_reports_the_other_rules_rows(tmp_path):
    cfg = load_config(
        REPO / "configs/vit_digits.yaml",
        [*TINY, "parallel.backend=single", "model.mup.base_width=16"],
    )  # 2 heads of 16 at width 32 (muP base width 16): heads=scale puts 4 heads of 16 at 64
    csv_path = tmp_path / "transfer.csv"
    kw = dict(steps=2, csv_path=csv_path, parametrizations=("mup",))
    fixed = run_transfer(cfg, [32, 64], [1e-3], **kw)
    scaled = run_transfer(cfg, [32, 64], [1e-3], heads="scale", **kw)
    assert [r["num_heads"] for r in fixed] == [2, 2]
    assert [r["num_heads"] for r in scaled] == [2, 4]  # the recipe's width: the recipe itself
    assert scaled[0] == fixed[0] and scaled[1]["train_loss"] != fixed[1]["train_loss"]
    assert len(read_rows(csv_path)) == 3  # the shared run at the recipe's width ran once
