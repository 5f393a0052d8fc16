"""Sweep files: grid expansion, naming, validation, and the dry-run of `pretrain slurm sweep`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launch.recipe import apply_overrides, format_override, parse_override
from launch.sweep import expand, load_sweep
from pretrain.cli import main as pretrain_main
from pretrain.run_dir import COMPLETED, write_status


def test_grid_is_a_cartesian_product_with_readable_names() -> None:
    grid = {"model.width": [64, 128], "optim.lr": [1e-3, 3e-3, 0.01]}
    sweep = expand({"base": "b.yaml", "grid": grid})
    assert len(sweep.runs) == 6
    assert sweep.runs[0].name == "width64-lr0.001"
    assert sweep.runs[0].overrides == {"model.width": 64, "optim.lr": 1e-3}
    assert sweep.runs[-1].name == "width128-lr0.01"
    assert len({run.name for run in sweep.runs}) == 6


def test_runs_are_crossed_with_the_grid() -> None:
    sweep = expand({"base": "b.yaml",
                    "runs": [{"name": "s", "overrides": {"model.depth": 2}},
                             {"name": "m", "overrides": {"model.depth": 4}}],
                    "grid": {"train.max_steps": [10, 20]}})  # fmt: skip
    assert [run.name for run in sweep.runs] == ["s-max_steps10", "s-max_steps20",
                                                "m-max_steps10", "m-max_steps20"]  # fmt: skip
    assert sweep.runs[3].overrides == {"model.depth": 4, "train.max_steps": 20}


def test_runs_without_grid_and_clashing_last_key_parts() -> None:
    sweep = expand({"base": "b.yaml", "runs": [{"name": "a"}, {"name": "b", "overrides": {}}]})
    assert [run.name for run in sweep.runs] == ["a", "b"]
    sweep = expand({"base": "b.yaml", "grid": {"model.lr": [1], "optim.lr": [2]}})
    assert sweep.runs[0].name == "model_lr1-optim_lr2"


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"runs": [{"name": "a"}]}, "base"),
        ({"base": "b", "runs": [{"name": "a"}], "extra": 1}, "unknown"),
        ({"base": "b", "runs": [{"name": "a"}, {"name": "a"}]}, "duplicate"),
        ({"base": "b", "runs": [{"name": "$(reboot)"}]}, "not allowed"),
        ({"base": "b", "runs": [{"name": "a", "overrides": {"x;y": 1}}]}, "invalid override"),
        ({"base": "b", "grid": {"lr": []}}, "non-empty"),
        (
            {"base": "b", "runs": [{"name": "a", "overrides": {"lr": 1}}], "grid": {"lr": [2]}},
            "overrides grid",
        ),
        ({"base": "b"}, "neither"),
    ],
)
def test_bad_sweeps_are_rejected(doc: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand(doc)


def test_overrides_round_trip() -> None:
    for key, value in [("a.b", 3e-4), ("a", "text"), ("a", "3"), ("a", [1, 2]), ("a", True),
                       ("a", "a b"), ("a", None), ("a", "")]:  # fmt: skip
        assert parse_override(format_override(key, value)) == (key, value)
    doc = apply_overrides({"optim": {"lr": 1}}, {"optim.lr": 2, "model.width": 8})
    assert doc == {"optim": {"lr": 2}, "model": {"width": 8}}
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"optim": 1}, {"optim.lr": 2})


def test_sweep_dry_run_renders_one_job_per_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.1},
                                                        "slurm": {"nodes": 2}}))  # fmt: skip
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": "base.yaml",
                                          "grid": {"optim.lr": [0.1, 0.2, 0.3]}}))  # fmt: skip
    assert load_sweep(sweep_file).base == tmp_path / "base.yaml"
    root = tmp_path / "root"
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["slurm", "sweep", str(sweep_file), "--root", str(root), "--dry-run"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 3 and out.count("#SBATCH --nodes=2") == 3
    for name in ("lr0.1", "lr0.2", "lr0.3"):
        assert f"#SBATCH --job-name={name}" in out
        assert f"run.dir={root / name}" in out
    assert not root.exists()


def test_sweep_only_selects_runs(tmp_path: Path, capsys) -> None:
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1}\n")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("base: base.yaml\nruns: [{name: a}, {name: b}]\n")
    argv = ["slurm", "sweep", str(sweep_file), "--root", str(tmp_path / "r"), "--dry-run"]
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main([*argv, "--only", "b"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.count("#!/bin/bash") == 1 and "#SBATCH --job-name=b" in out
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main([*argv, "--only", "c"])
    assert exit_info.value.code == 2 and "names no run" in capsys.readouterr().err


def test_after_names_earlier_runs_only_and_not_with_a_grid() -> None:
    sweep = expand({"base": "b", "runs": [{"name": "a"}, {"name": "b", "after": ["a", "a"]}]})
    assert [run.after for run in sweep.runs] == [(), ("a",)]
    for runs, message in [
        ([{"name": "b", "after": ["a"]}, {"name": "a"}], "names a: not a run listed before it"),
        ([{"name": "a", "after": ["a"]}], "not a run listed before it"),
        ([{"name": "a"}, {"name": "b", "after": "a"}], "must be a list of run names"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            expand({"base": "b", "runs": runs})
    with pytest.raises(ValueError, match="cannot be combined with a grid"):
        expand({"base": "b", "runs": [{"name": "a"}, {"name": "b", "after": ["a"]}],
                "grid": {"optim.lr": [1, 2]}})  # fmt: skip


def test_sweep_waits_only_for_an_upstream_run_it_can_start_from(tmp_path: Path, capsys) -> None:
    """A branch submitted without its stable run needs the stable run completed (or active:
    then it depends on that job); otherwise nothing is submitted and the culprit is named."""
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1}\n")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("base: base.yaml\nruns: [{name: stable}, "
                          "{name: branch, after: [stable]}]\n")  # fmt: skip
    root = tmp_path / "r"
    argv = ["slurm", "sweep", str(sweep_file), "--root", str(root), "--dry-run"]
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"# ---- {root / 'branch'} (after stable)" in out and "--dependency" not in out
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main([*argv, "--only", "branch"])
    assert exit_info.value.code == 2
    assert "run branch waits for stable, which is not submitted now" in capsys.readouterr().err
    (root / "stable").mkdir(parents=True)
    write_status(root / "stable", state=COMPLETED, step=10)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main([*argv, "--only", "branch"])
    assert exit_info.value.code == 0 and "--dependency" not in capsys.readouterr().out
