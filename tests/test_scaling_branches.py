"""Branched WSD plans: decay branches resumed from a shared stable-phase checkpoint train
exactly the WSD run they stand for, and `collect` attributes each branch to its decay start."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import read_model_tensors, step_dir_name
from pretrain.cli import main
from pretrain.run_dir import read_metrics
from pretrain.scaling_laws import synthetic as S
from pretrain.scaling_laws.branch_plan import branch_length, branched_cost, plan_branched_wsd
from pretrain.scaling_laws.collect import collect
from pretrain.scaling_laws.plan import Shape, model_stats_fn
from pretrain.scaling_laws.runner import run_sweep
from pretrain.scaling_laws.schedule_curves import scheduled_curves
from pretrain.scaling_laws.table import CURVE_COLUMNS, RUN_COLUMNS, read_runs, write_csv
from pretrain.scaling_laws.validate import ScalingDataError
from tests.conftest import REPO, TINY, kill_run_at_step, run_train, subprocess_env, train_cmd

RECIPE = "configs/vit_digits.yaml"


def as_args(overrides: dict) -> list[str]:
    return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def test_plan_shares_one_stable_run_per_size_and_costs_less():
    stats = model_stats_fn(RECIPE, TINY)
    runs = plan_branched_wsd([Shape(32, 2, 2), Shape(64, 2, 4)], [400, 200, 800], stats, 12,
                             "runs/x", decay_ratio=0.25, warmup_steps=10, family="vit")  # fmt: skip
    assert [r.name for r in runs[:4]] == ["vit-w32-d2-stable", "vit-w32-d2-decay200",
                                          "vit-w32-d2-decay400", "vit-w32-d2-decay800"]  # fmt: skip
    stable, branch = runs[0].overrides, runs[2].overrides
    assert stable["schedule.name"] == "constant" and stable["schedule.steps"] == 800
    assert stable["checkpoint.every_steps"] == 200 and stable["checkpoint.keep_last"] == 5
    assert branch["schedule.name"] == "wsd" and branch["schedule.steps"] == 500
    assert round(500 * branch["schedule.decay_fraction"]) == 100
    ckpt = f"runs/x/vit-w32-d2-stable/checkpoints/{step_dir_name(400)}"
    assert branch["checkpoint.resume"] == "auto" and branch["checkpoint.resume_fallback"] == ckpt
    assert runs[0].after == () and runs[2].after == ("vit-w32-d2-stable",)
    spent, alone = branched_cost(runs)
    assert alone / spent == pytest.approx((250 + 500 + 1000) / (800 + 50 + 100 + 200))
    with pytest.raises(ScalingDataError, match="after the 10 warmup steps"):
        plan_branched_wsd([Shape(32, 2, 2)], [5, 100], stats, 12, "r", warmup_steps=10)
    with pytest.raises(ScalingDataError, match="share only the divisor 1"):
        plan_branched_wsd([Shape(32, 2, 2)], [99, 100], stats, 12, "r")
    assert branch_length(400, 0.25) == (500, 0.2)


def test_branch_first_step_is_bitwise_the_unbranched_run_and_collect_attributes_it(tmp_path):
    root = tmp_path / "runs"
    stats = model_stats_fn(RECIPE, TINY)
    stable, early, late = plan_branched_wsd(
        [Shape(32, 2, 2)], [4, 6], stats, 12, root, decay_ratio=0.5, warmup_steps=2, family="vit"
    )
    common = [*TINY, "logging.eval_every_steps=0"]
    run_train(0, [*common, *as_args(stable.overrides), "logging.eval_every_steps=0",
                  f"run.dir={root / stable.name}"])  # fmt: skip
    every_step = ["logging.eval_every_steps=0", "logging.every_steps=1",
                  "checkpoint.every_steps=1", "checkpoint.keep_last=20"]  # fmt: skip
    branch = root / early.name
    run_train(0, [*common, *as_args(early.overrides), *every_step, f"run.dir={branch}"])
    ref = tmp_path / "unbranched"
    run_train(0, [*common, *as_args(early.overrides), *every_step, "checkpoint.resume=auto",
                  "checkpoint.resume_fallback=", f"run.dir={ref}"])  # fmt: skip

    # the branch resumed at step 4; its first step (5) and the rest equal the unbranched run's
    assert sorted(train_losses(branch)) == [5, 6]
    for step in (5, 6):
        assert train_losses(branch)[step] == train_losses(ref)[step], step
        a = read_model_tensors(branch / "checkpoints" / step_dir_name(step))
        b = read_model_tensors(ref / "checkpoints" / step_dir_name(step))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), step
    stable_4 = read_model_tensors(root / stable.name / "checkpoints" / step_dir_name(4))
    ref_4 = read_model_tensors(ref / "checkpoints" / step_dir_name(4))
    assert all(torch.equal(stable_4[k], ref_4[k]) for k in ref_4)

    got = collect([root / stable.name, branch])
    rows = {r["name"]: r for r in got.runs}
    assert rows[early.name]["decay_start"] == 4
    assert rows[early.name]["branch_of"] == str(root / stable.name / "checkpoints" /
                                                step_dir_name(4))  # fmt: skip
    assert rows[early.name]["schedule"] == "wsd" and rows[early.name]["schedule_steps"] == 6
    assert rows[stable.name]["schedule"] == "constant" and rows[stable.name]["branch_of"] == ""
    assert late.overrides["checkpoint.resume_fallback"].endswith(step_dir_name(6))
    assert rows[stable.name]["role"] == "stable" and rows[early.name]["role"] == "branch"

    # the curve laws read the branch as the WSD run it stands for, evaluated from step 5 on
    write_csv(tmp_path / "runs.csv", got.runs, RUN_COLUMNS)
    write_csv(tmp_path / "curves.csv", got.curves, CURVE_COLUMNS)
    by_name = {c.name: c for c in scheduled_curves(read_runs(tmp_path / "runs.csv"),
                                                   tmp_path / "curves.csv")}  # fmt: skip
    assert by_name[early.name].steps.tolist() == [5, 6]
    lrs, stable_lrs = by_name[early.name].schedule.lrs(), by_name[stable.name].schedule.lrs()
    assert len(lrs) == 6 and lrs[:4].tolist() == stable_lrs[:4].tolist() and lrs[5] < lrs[3]


def test_a_requeued_branch_resumes_from_its_own_checkpoint_not_the_stable_one(tmp_path):
    root = tmp_path / "runs"
    stable, branch = plan_branched_wsd([Shape(32, 2, 2)], [6], model_stats_fn(RECIPE, TINY), 12,
                                       root, decay_ratio=1.0, warmup_steps=2, family="vit")
    common = [*TINY, "logging.eval_every_steps=0"]
    run_train(0, [*common, *as_args(stable.overrides), "logging.eval_every_steps=0",
                  f"run.dir={root / stable.name}"])  # fmt: skip
    args = [*common, *as_args(branch.overrides), "logging.eval_every_steps=0",
            "checkpoint.every_steps=2", "checkpoint.keep_last=10"]  # fmt: skip
    ref = tmp_path / "uninterrupted"  # a fresh branch starts from the stable checkpoint
    first = run_train(0, [*args, f"run.dir={ref}"]).stderr
    stable_6 = root / stable.name / "checkpoints" / step_dir_name(6)
    assert f"resumed from {stable_6} at step 6" in first, first[-2000:]

    victim = root / branch.name  # killed after its own step-8 checkpoint, then requeued
    killed_at = kill_run_at_step(train_cmd(0, [*args, f"run.dir={victim}"]), victim, 9)
    again = run_train(0, [*args, f"run.dir={victim}"]).stderr
    match = re.search(r"resumed from (\S+) at step (\d+)", again)
    assert match and Path(match.group(1)).parent == victim / "checkpoints", again[-2000:]
    assert 8 <= int(match.group(2)) <= killed_at
    resumed_at = int(match.group(2))
    ref_losses, losses = train_losses(ref), train_losses(victim)
    assert all(losses[s] == ref_losses[s] for s in range(resumed_at + 1, 13))
    a = read_model_tensors(victim / "checkpoints" / step_dir_name(12))
    b = read_model_tensors(ref / "checkpoints" / step_dir_name(12))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_fallback_needs_auto_and_a_complete_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", RECIPE, *TINY, "checkpoint.resume=none",
              f"checkpoint.resume_fallback={tmp_path}"])  # fmt: skip
    assert e.value.code == 2
    proc = subprocess.run(train_cmd(0, [*TINY, "schedule.steps=1", f"run.dir={tmp_path / 'r'}",
                                        f"checkpoint.resume_fallback={tmp_path / 'nothing'}"]),
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert f"checkpoint.resume_fallback={tmp_path / 'nothing'}: not a complete" in proc.stderr


def test_run_skips_the_branches_of_a_failed_stable_run(tmp_path):
    base = ["model.width=32", "model.depth=2", "model.num_heads=2", "data.format=memory",
            "data.name=synthetic_images", "schedule.steps=2", "schedule.warmup_steps=0"]
    sweep = {"base": RECIPE, "runs": [
        {"name": "stable", "overrides": {**dict(o.split("=") for o in base),
                                         "checkpoint.resume_fallback": str(tmp_path / "none")}},
        {"name": "branch", "overrides": dict(o.split("=") for o in base), "after": ["stable"]},
    ]}  # fmt: skip
    stable, branch = run_sweep(sweep, tmp_path / "runs")
    assert stable.state == "failed" and "checkpoint.resume_fallback" in stable.error
    assert branch.state == "failed" and branch.seconds == 0.0
    assert branch.error == "not run: it waits for stable, which failed"


def test_fit_leaves_out_the_stable_runs_of_branches(tmp_path: Path, capsys):
    rows = S.as_rows(S.isoflop_runs(budgets=(1e18, 3e18, 1e19), points=4))
    rows[0]["role"], rows[1]["role"] = "stable", "branch"
    write_csv(tmp_path / "runs.csv", rows, RUN_COLUMNS)
    with pytest.raises(SystemExit) as e:
        main(["scaling", "fit", str(tmp_path / "runs.csv"), "-o", str(tmp_path / "fit"),
              "--boot", "0", "--jobs", "1"])  # fmt: skip
    assert e.value.code == 0
    assert "left out 1 stable-phase run(s) of branched WSD runs: syn000" in capsys.readouterr().out
    assert "11 runs" in (tmp_path / "fit" / "report.md").read_text()
