"""`pretrain runs status`: state, step, last loss and restarts of run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.runs import find_runs, format_table, summarize
from pretrain.cli import main as pretrain_main
from pretrain.run_dir import write_status


def make_runs(root: Path) -> None:
    done = root / "a-done"
    done.mkdir(parents=True)
    write_status(done, state="completed", step=100, max_steps=100, last_loss=2.5, restarts=1)
    pre = root / "b-preempted"
    pre.mkdir()
    write_status(pre, state="preempted", step=40, max_steps=100, restarts=0)
    (pre / "metrics.jsonl").write_text(
        json.dumps({"step": 39, "split": "train", "loss": 3.25})
        + "\n"
        + json.dumps({"step": 40, "split": "val", "loss": 9.0})
        + "\n"
        + '{"step": 4'
    )  # a torn last line is skipped; val records are not the training loss
    queued = root / "c-queued"
    (queued / "slurm").mkdir(parents=True)
    (queued / "slurm" / "jobs.jsonl").write_text(json.dumps({"job_id": "123"}) + "\n")
    (root / "not-a-run").mkdir()


def test_summaries(tmp_path: Path) -> None:
    make_runs(tmp_path)
    runs = find_runs(tmp_path)
    assert [run.name for run in runs] == ["a-done", "b-preempted", "c-queued"]
    assert find_runs(tmp_path / "a-done") == [tmp_path / "a-done"]
    rows = [summarize(run, {"123": "PENDING"}) for run in runs]
    assert [(r["state"], r["step"], r["last_loss"], r["restarts"]) for r in rows] == [
        ("completed", 100, 2.5, 1),
        ("preempted", 40, 3.25, 0),
        ("queued", None, None, 0)]  # fmt: skip
    assert rows[2]["job"] == "123" and rows[2]["slurm"] == "PENDING"
    table = format_table(rows).splitlines()
    assert table[0].split()[:4] == ["RUN", "STATE", "STEP", "LAST"]
    assert table[1].split()[:5] == ["a-done", "completed", "100/100", "2.5", "1"]
    assert table[3].split()[:6] == ["c-queued", "queued", "-", "-", "0", "123"]


def test_cli_json(tmp_path: Path, capsys) -> None:
    make_runs(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["runs", "status", str(tmp_path), "--json"])
    assert exit_info.value.code == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["run"]: r["state"] for r in rows} == {
        "a-done": "completed", "b-preempted": "preempted", "c-queued": "queued"}  # fmt: skip


def test_cli_no_runs(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pretrain_main(["runs", "status", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "no run directories" in capsys.readouterr().out
