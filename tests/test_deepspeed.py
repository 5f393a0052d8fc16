"""DeepSpeed ZeRO-1/2/3 through the real CLI under torchrun (gloo, CPU), and checkpoints moving
between DeepSpeed and FSDP2 at other world sizes.

The runs the tests only read start in one launch (tests/train_runs_worker.py); runs that do not
depend on each other are launched together (the machine has few cores, most of a run's wall
time is start-up). No DeepSpeed op is JIT-built: the optimizer is torch's AdamW and
the shared-memory all-reduce op is switched off (parallel.deepspeed.shm_comm=false).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import UnsafeCheckpointError, check_complete
from pretrain.checkpoint.convert import convert, reshard
from pretrain.checkpoint.convert.sources import (
    KINDS,
    CheckpointFormatError,
    DeepSpeedSource,
    open_source,
)
from pretrain.checkpoint.deepspeed_format import check_loadable
from pretrain.checkpoint.torch_files import safe_torch_load
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, TINY, kill_run_at_step, subprocess_env, train_cmd
from tests.train_runs_worker import Run, RunBatch

pytestmark = pytest.mark.slow

STEPS = 16
# Two micro-batches per step: DeepSpeed's own accumulation against the trainer's no-sync one.
COMMON = [
    *TINY,
    f"schedule.steps={STEPS}",
    "optim.grad_accum=2",
    "checkpoint.every_steps=4",
    "checkpoint.keep_last=5",
]


def zero(stage: int) -> list[str]:
    return ["parallel.backend=deepspeed", f"parallel.deepspeed.zero_stage={stage}"]


def run_together(jobs: list[tuple[int, list[str]]], timeout: float = 400) -> list[str]:
    """Start every (nproc, overrides) run at once; fail with the output of any that fails."""
    procs = [
        subprocess.Popen(
            train_cmd(n, o),
            cwd=REPO,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, o in jobs
    ]
    outputs = []
    for proc, (n, o) in zip(procs, jobs):
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(
                f"run {n} ranks {o[-3:]} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-6000:]}"
            )
        outputs.append(err)
    return outputs


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def resumed_step(stderr: str) -> int:
    import re

    match = re.search(r"resumed from \S+ at step (\d+)", stderr)
    assert match, "the run did not resume from a checkpoint"
    return int(match.group(1))


BATCH = RunBatch({
    "fsdp2": Run(2, "configs/vit_digits.yaml", (*COMMON, "parallel.backend=fsdp2")),
    **{f"zero{s}": Run(2, "configs/vit_digits.yaml", (*COMMON, *zero(s))) for s in (1, 2, 3)},
    "bf16": Run(2, "configs/vit_digits.yaml",
                (*COMMON, *zero(2), "parallel.mixed_precision=bf16")),
})


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Path]:
    """FSDP2 and ZeRO-1/2/3, 2 ranks each, same data and seed, checkpoints every 4 steps; one
    launch, the runs one after another (the SIGKILL test resumes CLI launches to their end)."""
    root = BATCH.start(request, tmp_path_factory.mktemp("ds"), REPO, subprocess_env(),
                       every_run=True)
    return {name: root / name for name in BATCH.runs}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_follows_fsdp2_trajectory(runs, stage):
    ref, ds = losses(runs["fsdp2"]), losses(runs[f"zero{stage}"])
    assert sorted(ds) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:  # fp32 on both sides; only reduction order differs
        assert ds[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5), (stage, step)
    norms = {
        r["step"]: r["grad_norm"]
        for r in read_metrics(runs[f"zero{stage}"])
        if r["split"] == "train"
    }
    ref_norms = {
        r["step"]: r["grad_norm"] for r in read_metrics(runs["fsdp2"]) if r["split"] == "train"
    }
    assert all(norms[s] == pytest.approx(ref_norms[s], rel=1e-3) for s in ref_norms)


def test_zero2_bf16_trains_like_fp32_and_its_checkpoint_converts(runs, tmp_path):
    """bf16 parameters and gradients with fp32 master weights: close to the fp32 trajectory
    (bf16 rounding), and the fp32 master copy is what conversion reads."""
    ref, got = losses(runs["fsdp2"]), losses(runs["bf16"])
    assert all(got[s] == pytest.approx(ref[s], rel=3e-2) for s in ref)
    ckpt = runs["bf16"] / "checkpoints/step_00000008"
    assert any((ckpt / "model").glob("bf16_zero_pp_rank_*_optim_states.pt"))
    out = convert(ckpt, tmp_path / "dcp", "dcp")
    weights = open_source(out)
    assert all(weights.params[n].dtype == torch.float32 for n in weights.params)
    module = safe_torch_load(ckpt / "model/mp_rank_00_model_states.pt")["module"]
    for name in weights.params:  # the bf16 module copy is the rounded fp32 master
        assert torch.equal(weights.read(name).bfloat16(), module[name]), name


def test_deepspeed_checkpoint_carries_the_training_state(runs):
    for stage in (1, 2, 3):
        ckpt = runs[f"zero{stage}"] / "checkpoints/step_00000008"
        assert check_complete(ckpt) is None
        state = json.loads((ckpt / "train_state.json").read_text())
        assert state["step"] == 8 and state["backend"] == "deepspeed" and state["world_size"] == 2
        assert state["loader"] and (ckpt / "rng/rank_00001.safetensors").exists()
        source = open_source(ckpt)
        assert (
            isinstance(source, DeepSpeedSource) and source.stage == stage and source.world_size == 2
        )
        if stage < 3:  # ZeRO-1/2 also store the full module: the assembled fp32 master equals it
            module = safe_torch_load(ckpt / "model/mp_rank_00_model_states.pt")["module"]
            assert all(torch.equal(source.read(n), module[n]) for n in source.params)


@pytest.mark.parametrize("stage", [2, 3])
def test_exact_resume_after_sigkill(runs, tmp_path, stage):
    """Killed mid-run, resumed from the last committed checkpoint: the final fp32 master weights
    and Adam moments equal the uninterrupted run's bit for bit."""
    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(5, 12)
    overrides = [*COMMON, *zero(stage), f"run.dir={victim}"]
    killed_at = kill_run_at_step(train_cmd(2, overrides), victim, kill_step)
    [err] = run_together([(2, overrides)])
    assert 4 <= resumed_step(err) <= killed_at
    assert read_status(victim)["state"] == "completed"
    final = f"checkpoints/step_{STEPS:08d}"
    ref, resumed = open_source(runs[f"zero{stage}"] / final), open_source(victim / final)
    for name in ref.params:
        for kind in KINDS:
            assert torch.equal(ref.read(name, kind), resumed.read(name, kind)), (
                seed,
                killed_at,
                name,
                kind,
            )
    assert losses(victim)[STEPS] == losses(runs[f"zero{stage}"])[STEPS]


def test_round_trips_between_deepspeed_and_fsdp2_continue_the_loss(runs, tmp_path):
    """2-rank ZeRO-2 -> DCP -> FSDP2 on 3 ranks, and 2-rank FSDP2 (DCP) -> DeepSpeed -> ZeRO-3 on
    1 rank: each resumes at the saved step and its losses match the original continuation."""
    to_fsdp2, to_zero3 = tmp_path / "to_fsdp2", tmp_path / "to_zero3"
    convert(runs["zero2"] / "checkpoints/step_00000008", to_fsdp2 / "checkpoints", "dcp")
    convert(runs["fsdp2"] / "checkpoints/step_00000008", to_zero3 / "checkpoints", "deepspeed")
    errs = run_together(
        [
            (3, [*COMMON, "parallel.backend=fsdp2", f"run.dir={to_fsdp2}"]),
            (0, [*COMMON, *zero(3), f"run.dir={to_zero3}"]),
        ]
    )
    for err, run_dir, original in zip(errs, (to_fsdp2, to_zero3), (runs["zero2"], runs["fsdp2"])):
        assert resumed_step(err) == 8
        got, want = losses(run_dir), losses(original)
        assert sorted(got) == list(range(9, STEPS + 1)), (
            "must continue from step 9, not from scratch"
        )
        for step in got:
            assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), (run_dir.name, step)


def test_native_checkpoint_for_another_world_size_asks_for_reshard(runs, tmp_path):
    ckpt = runs["zero2"] / "checkpoints/step_00000008"
    expected = {n: i.shape for n, i in open_source(ckpt).params.items()}
    with pytest.raises(CheckpointFormatError, match="pretrain ckpt reshard"):
        check_loadable(ckpt / "model", 2, 3, expected)
    with pytest.raises(CheckpointFormatError, match="ZeRO-2 on 2 ranks; this run is ZeRO-3"):
        check_loadable(ckpt / "model", 3, 2, expected)
    out = reshard(ckpt, tmp_path / "any")
    assert check_loadable(out / "model", 3, 1, expected) is True  # universal: any stage, any size
    assert reshard(runs["fsdp2"] / "checkpoints/step_00000008", tmp_path / "dcp") is None


def test_fsdp2_engine_refuses_a_deepspeed_checkpoint_with_the_convert_command(runs, tmp_path):
    from pretrain.checkpoint import CheckpointError, load_engine_state
    from pretrain.config import load_config
    from pretrain.dist import DistEnv
    from pretrain.engines.base import Engine
    from pretrain.models import build_model, get_family

    cfg = load_config(
        REPO / "configs/vit_digits.yaml", [*TINY, "parallel.backend=single", f"run.dir={tmp_path}"]
    )
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    engine = Engine(
        build_model(cfg.model),
        get_family("vit").loss,
        env,
        parallel=cfg.parallel,
        optim=cfg.optim,
        model_cfg=cfg.model,
        global_batch_size=cfg.data.global_batch_size,
    )
    with pytest.raises(
        CheckpointError, match="written by DeepSpeed.*pretrain ckpt convert .* --to dcp"
    ):
        load_engine_state(engine, runs["zero2"] / "checkpoints/step_00000008/model")


def test_missing_or_unsafe_zero_shard_is_reported(runs, tmp_path):
    ckpt = tmp_path / "step_00000008"
    shutil.copytree(runs["zero3"] / "checkpoints/step_00000008", ckpt)
    shard = ckpt / "model/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    saved = shard.read_bytes()
    shard.unlink()
    with pytest.raises(CheckpointFormatError, match=f"{shard}.*written by 2 ranks"):
        open_source(ckpt)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch /tmp/pretrain_ds_pwned",))

    torch.save({"optimizer_state_dict": Exploit()}, shard)
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system"):
        check_loadable(
            ckpt / "model",
            3,
            2,
            {
                n: i.shape
                for n, i in open_source(runs["zero3"] / "checkpoints/step_00000008").params.items()
            },
        )
    assert not Path("/tmp/pretrain_ds_pwned").exists()
    shard.write_bytes(saved)
