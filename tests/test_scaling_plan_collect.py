"""Planning an IsoFLOP sweep, reading run directories, the CSV tables and the CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pretrain.cli import main
from pretrain.run_dir import read_status
from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.collect import collect
from pretrain.scaling_laws.plan import (
    Shape,
    candidate_shapes,
    plan_isoflop,
    read_sweep,
    write_sweep,
)
from pretrain.scaling_laws.table import RUN_COLUMNS, read_curves, read_runs, write_csv
from pretrain.scaling_laws.validate import ScalingDataError


def fake_stats(overrides: dict) -> dict:
    """A transformer-like accounting: ~12 L d^2 parameters, 6 N FLOPs per token, 16 tokens."""
    w, d = overrides["model.width"], overrides["model.depth"]
    params = 12 * d * w * w + 100 * w
    return {"params": params, "flops_per_sample": 6 * params * 16, "tokens_per_sample": 16}


SHAPES = candidate_shapes(64, 4, 2, widths=[16, 32, 48, 64, 96, 128], depths=[1, 2, 4])


def test_plan_hits_budgets_and_brackets_the_target_ratio():
    runs = plan_isoflop([1e11, 1e12], 5, SHAPES, fake_stats, 32, base_steps=1000,
                        base_warmup=50, tokens_per_param=20, min_steps=10,
                        family="vit")  # fmt: skip
    assert len(runs) == 10 and len({r.name for r in runs}) == 10
    for r in runs:
        assert r.flops == pytest.approx(r.budget, rel=0.1)  # rounding to whole steps
        o = r.overrides
        assert o["schedule.steps"] == r.steps >= 10
        assert o["schedule.warmup_steps"] == max(1, round(0.05 * r.steps))
        assert o["model.num_heads"] == o["model.width"] // 16
        assert o["run.name"] == r.name and "run.dir" not in o  # ROOT/NAME, as Slurm sweeps
    for budget in (1e11, 1e12):
        ratios = [r.tokens / r.params for r in runs if r.budget == budget]
        assert min(ratios) < 20 < max(ratios)  # the profile brackets the expected optimum
    assert runs[0].name == "vit-C1e11-w16-d1" or runs[0].name.startswith("vit-C1e11-")


def test_plan_rejects_degenerate_grids():
    with pytest.raises(ScalingDataError, match="at least 2 compute budgets"):
        plan_isoflop([1e12], 5, SHAPES, fake_stats, 32)
    with pytest.raises(ScalingDataError, match="at least 3 points per budget"):
        plan_isoflop([1e11, 1e12], 2, SHAPES, fake_stats, 32)
    with pytest.raises(
        ScalingDataError, match=r"budget C=1e\+06: only 0 shape\(s\) reach 20 steps"
    ):
        plan_isoflop([1e6, 1e12], 3, SHAPES, fake_stats, 32)
    with pytest.raises(ScalingDataError, match="not positive multiples of the head dimension 16"):
        candidate_shapes(64, 4, 2, widths=[24, 32])


def test_sweep_round_trip_and_validation(tmp_path: Path):
    runs = plan_isoflop([1e11, 1e12], 3, SHAPES, fake_stats, 32, min_steps=10)
    sidecar = write_sweep(tmp_path / "sweep.yaml", "configs/vit_digits.yaml", runs)
    doc = read_sweep(tmp_path / "sweep.yaml")
    assert doc["base"] == "configs/vit_digits.yaml"
    assert [r["name"] for r in doc["runs"]] == [r.name for r in runs]
    assert doc["runs"][0]["overrides"]["model.width"] == runs[0].shape.width
    assert sidecar.exists() and "tokens_per_param" in sidecar.read_text().splitlines()[0]
    slurm_sweep = pytest.importorskip("launch.sweep", reason="Slurm sweep helper not merged")
    parsed = slurm_sweep.load_sweep(tmp_path / "sweep.yaml")  # the Slurm helper accepts it
    assert [r.name for r in parsed.runs] == [r.name for r in runs]
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"base": "x", "runs": [{"name": "a"}, {"name": "a"}]})
    )
    with pytest.raises(ScalingDataError, match="duplicate run name"):
        read_sweep(tmp_path / "bad.yaml")


def make_run(root: Path, name: str, params: int, loss: float, state: str = "completed",
             steps: int = 40, resumed: bool = False) -> Path:  # fmt: skip
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"family": "vit", "width": 32, "depth": 2}, "run": {"name": name}}))  # fmt: skip
    stats = {"params": params, "params_non_embedding": params - 10,
             "flops_per_sample": 100 * params, "tokens_per_sample": 17,
             "flops_note": "test"}  # fmt: skip
    (d / "model_stats.json").write_text(json.dumps(stats))
    recs = []
    for step in range(10, steps + 1, 10):
        samples = step * 8
        recs.append({"step": step, "split": "train", "loss": loss + 1 / step, "samples": samples,
                     "tokens": samples * 17, "flops": samples * 100 * params})  # fmt: skip
        recs.append({"step": step, "split": "val", "loss": loss + 2 / step, "samples": samples})
    if resumed:  # a restart logs steps after the checkpoint again, with slightly different values
        recs.append({"step": steps, "split": "val", "loss": loss + 0.001, "samples": steps * 8})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{torn")
    (d / "status.json").write_text(json.dumps({"state": state, "step": steps}))
    return d


def test_collect_reads_run_dirs_and_explains_skips(tmp_path: Path):
    a = make_run(tmp_path, "a", 1000, 2.0, resumed=True)
    b = make_run(tmp_path, "b", 4000, 1.5)
    c = make_run(tmp_path, "c", 9000, 1.0, state="preempted")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "status.json").write_text(json.dumps({"state": "completed"}))
    got = collect([a, b, c, tmp_path / "d", tmp_path / "missing"], smooth=2)
    assert [r["name"] for r in got.runs] == ["a", "b"]
    row = got.runs[0]
    assert (
        row["params"] == 1000
        and row["tokens"] == 40 * 8 * 17
        and row["flops"] == 40 * 8 * 100 * 1000
    )
    assert row["loss"] == pytest.approx((2.0 + 2 / 30 + 2.001) / 2)  # last of duplicated step 40
    assert row["loss_source"] == "val[2]" and row["status"] == "completed"
    reasons = dict(got.skipped)
    assert "not 'completed'" in reasons[str(c)]
    assert "model_stats.json" in reasons[str(tmp_path / "d")]
    assert reasons[str(tmp_path / "missing")] == "not a directory"
    curve_a = [r for r in got.curves if r["name"] == "a"]
    assert [r["flops"] for r in curve_a] == [s * 8 * 100 * 1000 for s in (10, 20, 30, 40)]


def test_tables_round_trip_and_name_bad_cells(tmp_path: Path):
    rows = S.as_rows(S.isoflop_runs(budgets=(1e18, 1e19), points=4))
    write_csv(tmp_path / "runs.csv", rows, RUN_COLUMNS)
    table = read_runs(tmp_path / "runs.csv")
    np.testing.assert_allclose(table.column("loss"), [r["loss"] for r in rows])
    rows[2]["loss"] = "oops"
    write_csv(tmp_path / "bad.csv", rows, RUN_COLUMNS)
    with pytest.raises(ScalingDataError, match="column 'loss' of run 'syn002' is 'oops'"):
        read_runs(tmp_path / "bad.csv").column("loss")
    (tmp_path / "short.csv").write_text("name,params,loss\nx,1,2\n")
    with pytest.raises(ScalingDataError, match="missing column.*tokens, flops"):
        read_runs(tmp_path / "short.csv")


def test_cli_collect_then_fit_writes_report_and_figures(tmp_path: Path, capsys):
    r = S.isoflop_runs(budgets=(1e18, 3e18, 1e19, 3e19), points=6, noise=0.005, seed=1)
    write_csv(tmp_path / "runs.csv", S.as_rows(r), RUN_COLUMNS)
    curves = S.training_curves(sizes=np.geomspace(3e7, 3e9, 8), max_compute=1e20)
    write_csv(
        tmp_path / "curves.csv", S.curve_rows(curves), ["name", "params", "flops", "tokens", "loss"]
    )
    assert len(read_curves(tmp_path / "curves.csv")) == 8
    out = tmp_path / "fit"
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(tmp_path / "runs.csv"),
              "--curves", str(tmp_path / "curves.csv"), "-o", str(out),
              "--boot", "30", "--jobs", "1", "--target", "1e21", "--predict", "1e9,2e10",
              "--holdout-largest", "1", "--min-progress", "0"])  # fmt: skip
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "approach 3" in text and "C=1e+21" in text
    for f in (
        "report.md",
        "fits.json",
        "loss_vs_compute.png",
        "isoflop.png",
        "optimal_allocation.png",
    ):
        assert (out / f).stat().st_size > 0, f
    fits = json.loads((out / "fits.json").read_text())
    assert fits["approach3_parametric"]["holdout_quality"]["n"] == 6
    assert fits["predictions"][0]["approach2"]["N_opt"]["lo"] is not None
    report = (out / "report.md").read_text()
    assert "FLOPs accounting" in report and "Compute-optimal predictions" in report


def test_cli_fit_reports_bad_input_without_traceback(tmp_path: Path, capsys):
    rows = S.as_rows(S.isoflop_runs(budgets=(1e18, 1e19), points=4))
    rows[1]["loss"] = -1
    write_csv(tmp_path / "runs.csv", rows, RUN_COLUMNS)
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(tmp_path / "runs.csv"), "-o", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "loss of run 'syn001' is -1; values must be positive" in capsys.readouterr().err


def test_shape_overrides_name_the_model_keys():
    assert Shape(32, 2, 2).overrides() == {
        "model.width": 32,
        "model.depth": 2,
        "model.num_heads": 2,
    }


def test_warnings_flag_an_unidentified_irreducible_loss():
    from pretrain.scaling_laws.analysis import Options, analyze
    from pretrain.scaling_laws.parametric import ParametricLaw
    from pretrain.scaling_laws.table import RunTable

    no_floor = ParametricLaw(E=1e-9, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    r = S.isoflop_runs(law=no_floor, budgets=(1e18, 1e19, 1e20), points=6, noise=0.0)
    a = analyze(RunTable(S.as_rows(r)), None, Options(n_boot=0, n_jobs=1))
    assert any("E =" in w and "collapsed" in w for w in a.warnings())
    good = S.isoflop_runs(budgets=(1e18, 1e19, 1e20, 1e21), points=7, noise=0.003)
    b = analyze(RunTable(S.as_rows(good)), None, Options(n_boot=0, n_jobs=1))
    assert not [w for w in b.warnings() if w.startswith("approach 3")]


def test_a_fit_that_explains_nothing_is_a_warning_at_the_top_of_report_and_stdout():
    """Losses of two measures mixed (every other run's loss doubled): approach 3 explains little
    of the variance; the report and the terminal say so before any number."""
    from pretrain.scaling_laws.analysis import Options, analyze
    from pretrain.scaling_laws.report import render
    from pretrain.scaling_laws.study import summary
    from pretrain.scaling_laws.table import RunTable

    rows = S.as_rows(S.isoflop_runs(budgets=(1e18, 1e19, 1e20), points=6, noise=0.0))
    rng = np.random.default_rng(0)
    for row in rows:
        row["loss"] = float(rng.uniform(2.0, 4.0))  # no relation to N or D left
    a = analyze(RunTable(rows), None, Options(n_boot=0, n_jobs=1))
    flagged = [w for w in a.warnings() if "R²" in w]
    assert flagged and flagged[0].startswith("approach 3"), a.warnings()
    report = render(a, []).splitlines()
    assert report[0] == "# Scaling-law study" and report[2].startswith("> **WARNING:**")
    assert summary(a)[0].startswith("WARNING: ")


def test_cli_run_rejects_a_bad_override_before_training(tmp_path: Path, capsys):
    sweep = {"base": str(Path("configs/vit_digits.yaml").resolve()),
             "runs": [{"name": "ok", "overrides": {"model.width": 32, "model.num_heads": 2}},
                      {"name": "bad", "overrides": {"optim.lrr": 1e-3}}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    with pytest.raises(SystemExit) as e:
        main(["scaling", "run", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "runs")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "sweep run 'bad'" in err and "optim.lrr" in err
    assert not (tmp_path / "runs" / "ok").exists()  # nothing trained


def kill_when_training(run_dir: Path) -> threading.Thread:
    """SIGKILL the process training into `run_dir` once it reports `running` (a hard death:
    no exception, no status update, as when the kernel kills a run that ran out of memory)."""

    def watch() -> None:
        while read_status(run_dir).get("state") != "running":
            time.sleep(0.05)
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"run.dir={run_dir}".encode() in argv:
                os.kill(int(proc.name), signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_cli_run_goes_on_after_crashing_and_killed_runs(tmp_path: Path, capsys, monkeypatch):
    """Each run is its own process: one that crashes at runtime (its dataset does not exist, which
    only the loader finds out) and one killed mid-training are reported with why; the runs
    around them complete."""
    from tests.conftest import REPO, TINY

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    fixed = dict(o.split("=", 1) for o in [*TINY, "schedule.steps=2"])
    sweep = {"base": str(REPO / "configs/vit_digits.yaml"),
             "runs": [{"name": "first", "overrides": fixed},
                      {"name": "crash", "overrides": {**fixed, "data.name": "no_such_data"}},
                      {"name": "killed", "overrides": {**fixed, "schedule.steps": 1_000_000}},
                      {"name": "last", "overrides": fixed}]}  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    argv = ["scaling", "run", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "runs")]
    killer = kill_when_training(tmp_path / "runs" / "killed")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1 and not killer.is_alive()
    out, err = capsys.readouterr()
    assert "2 of 4 runs completed" in out
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and failed[0].startswith("failed: crash: pretrain train: error: ")
    assert "no_such_data" in failed[0] and failed[1] == "failed: killed: killed by SIGKILL"
    names = ("first", "crash", "killed", "last")
    status = {n: read_status(tmp_path / "runs" / n).get("state") for n in names}
    assert status == {"first": "completed", "crash": "failed", "killed": "running",
                      "last": "completed"}  # fmt: skip

    sweep["runs"] = sweep["runs"][:2] + sweep["runs"][3:]  # again: completed runs are skipped
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    finished = [read_status(tmp_path / "runs" / n)["updated"] for n in ("first", "last")]
    with pytest.raises(SystemExit):
        main(argv)
    out, err = capsys.readouterr()
    assert "2 of 3 runs completed" in out and "failed: crash: pretrain train: error: " in err
    assert [read_status(tmp_path / "runs" / n)["updated"] for n in ("first", "last")] == finished


def test_runs_do_not_join_the_process_group_of_the_process_that_starts_them(
        tmp_path: Path, capsys, monkeypatch):
    """`scaling run` from a process that is itself in a group (an in-process run left RANK,
    WORLD_SIZE and MASTER_PORT behind, its store listening there): each run is a job of its
    own. Inheriting them made every run re-bind that port and fail with EADDRINUSE."""
    import socket

    from tests.conftest import REPO, TINY

    store = socket.socket()
    store.bind(("127.0.0.1", 0))
    store.listen()
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(store.getsockname()[1]))):
        monkeypatch.setenv(key, value)
    fixed = dict(o.split("=", 1) for o in [*TINY, "schedule.steps=1", "parallel.backend=fsdp2"])
    sweep = {"base": str(REPO / "configs/vit_digits.yaml"),
             "runs": [{"name": "a", "overrides": fixed}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    try:
        with pytest.raises(SystemExit) as e:
            main(["scaling", "run", str(tmp_path / "s.yaml"), "--root", str(tmp_path / "runs")])
    finally:
        store.close()
    assert e.value.code == 0, capsys.readouterr().err
    assert read_status(tmp_path / "runs" / "a")["state"] == "completed"
