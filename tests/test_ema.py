"""The weight EMA (optim.ema_decay): its value, its checkpoints, and what uses it."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest
import torch

from data_pipeline import build_loader
from pretrain.checkpoint import Checkpointer, latest_complete, read_model_tensors
from pretrain.config import ConfigError, load_config
from pretrain.mup.runner import build, setup
from pretrain.run_dir import read_metrics, read_status
from pretrain.step import evaluate, train_step
from tests.conftest import REPO, TINY, kill_run_at_step, run_train, subprocess_env, train_cmd
from tests.test_checkpoint_commit import run_inprocess

DECAY = 0.9  # fast enough that a few steps move the EMA well away from both ends


def tiny_config(run_dir, *overrides: str):
    return load_config(REPO / "configs/vit_digits.yaml",
                       [*TINY, "parallel.backend=single", f"run.dir={run_dir}",
                        f"optim.ema_decay={DECAY}", *overrides])


def weights(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.ema.params.items()}


def test_ema_after_k_steps_is_the_closed_form(tmp_path):
    """ema_k = d^k w_0 + (1 - d) sum_{i=1..k} d^(k-i) w_i, computed here in float64."""
    cfg = tiny_config(tmp_path / "unused", "schedule.steps=5")
    env = setup(cfg)
    engine = build(cfg, env, seed=0)
    history = [weights(engine)]
    data = iter(build_loader(cfg.data, 0, 1, "train"))
    for step in range(5):
        train_step(engine, data, step, cfg.optim.lr, cfg.schedule, 1)
        history.append(weights(engine))
    k = len(history) - 1
    for name, ema in engine.ema.shadow.items():
        expected = DECAY**k * history[0][name].double()
        for i in range(1, k + 1):
            expected += (1 - DECAY) * DECAY ** (k - i) * history[i][name].double()
        assert ema.dtype == torch.float32
        torch.testing.assert_close(ema.double(), expected, rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(ema, history[-1][name]), name  # it does lag the weights


def test_evaluation_reads_the_ema_and_training_resumes_untouched(tmp_path):
    cfg = tiny_config(tmp_path / "unused", "schedule.steps=3")
    env = setup(cfg)
    engine = build(cfg, env, seed=0)
    data = iter(build_loader(cfg.data, 0, 1, "train"))
    for step in range(3):
        train_step(engine, data, step, cfg.optim.lr, cfg.schedule, 1)
    before = weights(engine)
    val = build_loader(cfg.data, 0, 1, "val")
    with engine.ema_weights():
        inside = weights(engine)
        ema_loss = evaluate(engine, val, 2)["loss"]
    assert all(torch.equal(inside[n], e) for n, e in engine.ema.shadow.items())
    assert all(torch.equal(before[n], p) for n, p in weights(engine).items())  # swapped back
    assert evaluate(engine, val, 2)["loss"] != ema_loss


def test_trainer_logs_the_ema_evaluation_and_checkpoints_it(tmp_path):
    run_inprocess(tmp_path / "run", f"optim.ema_decay={DECAY}", "schedule.steps=4",
                  "logging.eval_every_steps=4")
    ckpt = latest_complete(tmp_path / "run" / "checkpoints")
    ema, model = read_model_tensors(ckpt, "ema."), read_model_tensors(ckpt)
    assert ema.keys() <= model.keys() and ema
    assert any(not torch.equal(ema[n], model[n]) for n in ema)
    assert [r for r in read_metrics(tmp_path / "run") if r["split"] == "val"]


def test_a_checkpoint_without_ema_starts_it_from_the_loaded_weights(tmp_path):
    run_dir = tmp_path / "run"
    run_inprocess(run_dir, "schedule.steps=2")  # no EMA
    cfg = tiny_config(run_dir, "schedule.steps=2")
    env = setup(cfg)
    engine = build(cfg, env, seed=1)
    ckpt = latest_complete(run_dir / "checkpoints")
    Checkpointer(run_dir, env, keep_last=2).load(ckpt, engine, seed=0)
    saved = read_model_tensors(ckpt)
    assert all(torch.equal(saved[n], e) for n, e in engine.ema.shadow.items())


def test_ema_decay_out_of_range_and_zero3_are_refused_at_load():
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_config(None, ["optim.ema_decay=1.0"])
    with pytest.raises(ConfigError, match="optim.ema_decay .*ZeRO-3"):
        load_config(None, ["optim.ema_decay=0.99", "parallel.backend=deepspeed",
                           "parallel.deepspeed.zero_stage=3"])
    load_config(None, ["optim.ema_decay=0.99", "parallel.backend=deepspeed"])  # ZeRO-2


def test_export_ema_weights_and_refuse_a_run_without(tmp_path):
    run_inprocess(tmp_path / "run", f"optim.ema_decay={DECAY}", "schedule.steps=3")
    ckpt = latest_complete(tmp_path / "run" / "checkpoints")
    out = tmp_path / "ema.safetensors"
    cmd = [sys.executable, "-m", "pretrain", "ckpt", "export", str(ckpt), str(out), "--ema"]
    subprocess.run(cmd, cwd=REPO, env=subprocess_env(), check=True, capture_output=True)
    from safetensors.torch import load_file

    exported, ema = load_file(out), read_model_tensors(ckpt, "ema.")
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[n], ema[n]) for n in ema)

    run_inprocess(tmp_path / "plain", "schedule.steps=1")
    plain = latest_complete(tmp_path / "plain" / "checkpoints")
    cmd[5:7] = [str(plain), str(tmp_path / "x.safetensors")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "holds no EMA" in proc.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------- 2 ranks (FSDP2), slow

# Evaluations (on the EMA) between the steps, with FSDP2 keeping the weights it gathers for a
# forward: training after one must read its own weights again, not the EMA it evaluated.
COMMON = [*TINY, "schedule.steps=16", "checkpoint.every_steps=4", "checkpoint.keep_last=5",
          "parallel.backend=fsdp2", f"optim.ema_decay={DECAY}", "logging.eval_every_steps=3",
          "logging.eval_batches=1", "parallel.reshard_after_forward=false"]


@pytest.fixture(scope="module")
def fsdp2_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ema") / "ref"
    run_train(2, [*COMMON, f"run.dir={run_dir}"])
    return run_dir


@pytest.mark.slow
def test_ema_is_bitwise_after_sigkill_and_resume(tmp_path, fsdp2_reference):
    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(5, 13)
    # The victim saves in the background: its checkpoints stage the EMA while training goes on.
    overrides = [*COMMON, "checkpoint.async_save=true", f"run.dir={victim}"]
    killed_at = kill_run_at_step(train_cmd(2, overrides), victim, kill_step)
    run_train(2, overrides)
    assert read_status(victim)["state"] == "completed"
    for prefix in ("ema.", "model."):
        ref = read_model_tensors(latest_complete(fsdp2_reference / "checkpoints"), prefix)
        got = read_model_tensors(latest_complete(victim / "checkpoints"), prefix)
        assert ref.keys() == got.keys()
        differ = [k for k in ref if not torch.equal(ref[k], got[k])]
        assert not differ, f"{prefix} killed at {killed_at} (seed {seed}): {differ[:5]}"


@pytest.mark.slow
def test_ema_reshards_from_two_ranks_to_one(tmp_path, fsdp2_reference):
    """The 2-rank FSDP2 checkpoint's EMA loads bitwise into one process, and the run continued
    there ends with the EMA the 2-rank run reached (up to the reductions' rounding)."""
    step8 = fsdp2_reference / "checkpoints" / "step_00000008"
    run_dir = tmp_path / "one"
    shutil.copytree(step8, run_dir / "checkpoints" / step8.name)
    cfg = tiny_config(run_dir)
    env = setup(cfg)
    engine = build(cfg, env, seed=1)
    Checkpointer(run_dir, env, keep_last=5).load(step8, engine, seed=0)
    saved = read_model_tensors(step8, "ema.")
    assert saved.keys() == engine.ema.shadow.keys()
    assert all(torch.equal(saved[n], e) for n, e in engine.ema.shadow.items())

    one = [c.replace("parallel.backend=fsdp2", "parallel.backend=single") for c in COMMON
           if not c.startswith("parallel.reshard")]
    run_train(0, [*one, f"run.dir={run_dir}"])
    ref = read_model_tensors(latest_complete(fsdp2_reference / "checkpoints"), "ema.")
    got = read_model_tensors(latest_complete(run_dir / "checkpoints"), "ema.")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)
