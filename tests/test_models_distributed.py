"""DiT and LM through the real CLI under torchrun (gloo, CPU): FSDP2 training, evaluation hooks,
bitwise-exact resume, and generation from the resulting LM checkpoint. (DDP wrapping is
covered in-process by tests/test_dit.py.)"""

from __future__ import annotations

import argparse
import math
import re
import shutil

import pytest
import torch

from pretrain.checkpoint import latest_complete, read_model_tensors
from pretrain.cli.generate import generate_text, register
from pretrain.run_dir import read_metrics
from tests.conftest import REPO, TINY, run_train, subprocess_env
from tests.train_runs_worker import Run, RunBatch

pytestmark = pytest.mark.slow


def lm_data_name() -> str:
    """The packed text corpus (doc_ids, position_ids) once build_loader serves data.name=text,
    else synthetic tokens."""
    from data_pipeline import DataConfig, build_loader

    try:
        build_loader(
            DataConfig(format="memory", name="text", seq_len=16, global_batch_size=12), 0, 1
        )
    except ValueError:
        return "synthetic_tokens"
    return "text"


FAMILY = {
    # Eval (samples + attention entropy) at step 4, right before the checkpoint the resume
    # starts from: if evaluation touched the training RNG, the resumed run would differ.
    "dit": [
        "model.family=dit",
        "data.name=synthetic_images",
        "model.attn_entropy=true",
        "model.dit.sample_steps=2",
        "model.dit.samples_per_class=2",
        "model.dit.objective=flow",
        "model.dit.timestep_sampling=logit_normal",
        "logging.eval_every_steps=4",
        "logging.eval_batches=1",
    ],
    # σReparam's power-iteration buffer must be checkpointed for the resume to be exact.
    "lm": [
        "model.family=lm",
        f"data.name={lm_data_name()}",
        "data.seq_len=16",
        "model.lm.seq_len=16",
        "model.sigma_reparam=true",
        "model.qk_norm=true",
        "model.norm=rmsnorm",
        "model.norm_placement=peri",
    ],
}


def common(family: str) -> list[str]:
    return [
        *TINY,
        *FAMILY[family],
        "schedule.steps=8",
        "checkpoint.every_steps=4",
        "checkpoint.keep_last=3",
        "parallel.backend=fsdp2",
    ]


# One uninterrupted 2-rank FSDP2 run per family, in one launch (tests/train_runs_worker.py);
# the resumes are CLI launches of their own.
BATCH = RunBatch({family: Run(2, "configs/vit_digits.yaml", tuple(common(family)))
                  for family in FAMILY})


@pytest.fixture(scope="module")
def reference_runs(request, tmp_path_factory) -> dict:
    """One uninterrupted 2-rank FSDP2 run per family, shared by the tests below."""
    root = BATCH.start(request, tmp_path_factory.mktemp("families"), REPO, subprocess_env())
    return {family: root / family for family in FAMILY}


@pytest.mark.parametrize("family", sorted(FAMILY))
@BATCH.needs(*FAMILY)
def test_trains_under_fsdp2_and_resumes_bitwise(tmp_path, reference_runs, family):
    ref = reference_runs[family]
    records = read_metrics(ref)
    train = {r["step"]: r for r in records if r["split"] == "train"}
    assert sorted(train) == list(range(1, 9)) and all(
        math.isfinite(r["loss"]) for r in train.values()
    )
    assert all(r["flops"] > 0 and r["tokens"] > 0 for r in train.values())
    if family == "dit":
        val = [r for r in records if r["split"] == "val"]
        assert [r["step"] for r in val] == [4, 8]
        assert {"attn_entropy/layer0_mean", "attn_entropy/layer1_min_head"} <= set(val[-1])
        assert (ref / "samples" / "step_00000004.png").exists() and (
            ref / "samples" / "step_00000008.png"
        ).exists()

    resumed = tmp_path / "resumed"
    shutil.copytree(
        ref / "checkpoints" / "step_00000004", resumed / "checkpoints" / "step_00000004"
    )
    proc = run_train(2, [*common(family), f"run.dir={resumed}"])
    assert re.search(r"resumed from \S+ at step 4\b", proc.stderr)
    want, got = (read_model_tensors(latest_complete(d / "checkpoints")) for d in (ref, resumed))
    assert want.keys() == got.keys()
    if family == "lm":
        assert any(k.endswith("qkv.u") for k in want), "σReparam state must be checkpointed"
    mismatched = [k for k in want if not torch.equal(want[k], got[k])]
    assert not mismatched, mismatched[:5]


@BATCH.needs("lm", "dit")
def test_generate_from_the_fsdp2_lm_checkpoint(reference_runs, capsys):
    ref = reference_runs["lm"]
    greedy = generate_text(ref, "ab", 6)
    assert (
        greedy == generate_text(ref, "ab", 6)
        and len(greedy.encode("utf-8", errors="surrogatepass")) >= 1
    )
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", str(ref), "--prompt", "ab", "--max-new-tokens", "6"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "ab" + greedy + "\n"
    args = parser.parse_args(
        ["generate", str(ref / "checkpoints" / "step_00000004"), "--top-k", "4", "--seed", "2"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(["generate", str(reference_runs["dit"])])
    with pytest.raises(ValueError, match="not an lm"):  # the CLI's one error path prints it
        args.func(args)
