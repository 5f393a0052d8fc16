"""The weight EMA under DeepSpeed ZeRO-2: bitwise after SIGKILL + resume, carried by
`ckpt reshard` to another world size, exported with `ckpt export --ema`."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from pretrain.checkpoint import latest_complete
from pretrain.checkpoint.convert import export_safetensors, reshard
from pretrain.run_dir import read_status
from tests.conftest import TINY, kill_run_at_step, run_train, train_cmd

pytestmark = pytest.mark.slow

# Evaluations (on the EMA, swapped into DeepSpeed's module) between the steps.
COMMON = [*TINY, "schedule.steps=12", "checkpoint.every_steps=4", "checkpoint.keep_last=5",
          "parallel.backend=deepspeed", "parallel.deepspeed.zero_stage=2",
          "optim.ema_decay=0.9", "logging.eval_every_steps=3", "logging.eval_batches=1"]


def ema_of(ckpt) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model" / "ema.safetensors"))


@pytest.fixture(scope="module")
def zero2_reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ema_ds") / "ref"
    run_train(2, [*COMMON, f"run.dir={run_dir}"])
    return run_dir


def test_ema_is_bitwise_after_sigkill_and_resume(tmp_path, zero2_reference):
    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(5, 10)
    killed_at = kill_run_at_step(train_cmd(2, [*COMMON, f"run.dir={victim}"]), victim, kill_step)
    run_train(2, [*COMMON, f"run.dir={victim}"])
    assert read_status(victim)["state"] == "completed"
    ref = ema_of(latest_complete(zero2_reference / "checkpoints"))
    got = ema_of(latest_complete(victim / "checkpoints"))
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"killed at {killed_at} (seed {seed}): {differ[:5]}"


def test_ema_is_carried_by_reshard_and_exported(tmp_path, zero2_reference):
    step8 = zero2_reference / "checkpoints" / "step_00000008"
    out = reshard(step8, tmp_path / "one" / "checkpoints")
    saved, carried = ema_of(step8), ema_of(out)
    assert all(torch.equal(saved[n], carried[n]) for n in saved)
    exported = load_file(str(export_safetensors(out, tmp_path / "ema.safetensors", ema=True)))
    assert all(torch.equal(saved[n], exported[n]) for n in saved)

    run_train(1, [*COMMON, f"run.dir={tmp_path / 'one'}"])  # 2 ranks -> 1, from universal
    ref = ema_of(latest_complete(zero2_reference / "checkpoints"))
    got = ema_of(latest_complete(tmp_path / "one" / "checkpoints"))
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5, msg=name)
