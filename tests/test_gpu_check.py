"""bench/gpu_check.sh at toy sizes on the CPU, so the GPU check cannot rot between GPU loans:
every model trains through the engine and a plain loop, a checkpoint is timed, the real trainer
runs FSDP2 and DDP at world size 1 through evaluation and an async checkpoint, the JPEG
device-decode loader runs its torch ops on PIL-decoded input, all with
deepspeed / webdataset / streaming unimportable (as on the GPU image)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_the_blocker_makes_the_missing_packages_unimportable():
    env = subprocess_env() | {"PYTHONPATH": f"{REPO}/bench/gpu_check_blocker:{REPO}"}
    for name in ("deepspeed", "webdataset", "streaming"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=env,
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "blocked by bench/gpu_check_blocker" in proc.stderr


def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path):
    out = tmp_path / "results.json"
    env = subprocess_env() | {"PYTHON": sys.executable}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--tiny", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {r["model"]: r for r in results["models"]}
    assert set(rows) == {"vit_tiny", "dit_tiny", "lm_tiny"}
    for row in rows.values():
        assert row["steps_per_s"] > 0 and row["plain_steps_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["mixed_precision"] == "none" and row["compile"] is False  # CPU: auto = off
    assert results["checkpoint"]["checkpoint_gb"] > 0
    assert results["flex_attention"]["max_abs_diff"] < 1e-4
    assert [(r["backend"], r["ok"]) for r in results["trainer"]] == [("fsdp2", True), ("ddp", True)]
    assert all(r["val_steps"] and r["checkpoints"] for r in results["trainer"])
    assert results["unexpected_imports"] == []
    # the device-decode loader (device step on the CPU, PIL-decoded input) against the workers'
    decode = results["jpeg_decode"]
    assert decode["device_decode_samples_per_s"] > 0 and decode["cpu_workers_samples_per_s"] > 0
    assert decode["labels_equal"] and decode["max_levels"] <= 3


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path):
    """On a loaned GPU one broken section must not cost the other figures: the error is in
    the JSON (rewritten after every section), later sections run, none starts past the
    deadline, and the exit status says something failed."""
    from bench.gpu_check import Sections, finish

    out = tmp_path / "results.json"
    results: dict = {"models": []}
    sections = Sections(results, str(out), deadline_s=0)

    def broken() -> None:
        raise RuntimeError("no kernel image for this device")

    sections.run("first", broken)
    assert "no kernel image" in json.loads(out.read_text())["errors"]["first"]["error"]
    sections.run("second", lambda: results.update(second=1))
    assert json.loads(out.read_text())["second"] == 1
    late = Sections(results, str(out), deadline_s=1e-9)
    assert late.run("third", lambda: results.update(third=1)) is None
    assert "third" not in results and results["skipped"] == ["third"]
    only = Sections(results, str(out), deadline_s=0, only="second")
    only.run("fourth", lambda: results.update(fourth=1))
    assert "fourth" not in results and "fourth" not in results["skipped"]
    assert finish(results, str(out)) == 1
