"""The device mesh (parallel.mesh): layout errors, HSDP and tensor parallelism against one
process, exact resume on a mesh, and checkpoints moving between mesh shapes (4 gloo ranks)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
import torch

from pretrain.engines.base import clip_across_meshes
from pretrain.mesh import MeshShape, check_model_for_tp, resolve_mesh
from pretrain.models.config import LMConfig, ModelConfig
from pretrain.parallel_config import MeshConfig
from pretrain.run_dir import read_metrics, read_status
from tests.conftest import REPO, kill_run_at_step, subprocess_env, train_cmd
from tests.test_distributed import final_weights, resumed_from, train_losses
from tests.train_runs_worker import Run, RunBatch

# ---------------------------------------------------------------- layout rules (no processes)


def test_default_mesh_is_the_flat_run():
    assert resolve_mesh(MeshConfig(), 4, "fsdp2") == MeshShape(1, 4, 1)
    assert resolve_mesh(MeshConfig(), 1, "single") == MeshShape(1, 1, 1)
    assert resolve_mesh(MeshConfig(dp_replicate=2, tp=2), 8, "fsdp2") == MeshShape(2, 2, 2)


@pytest.mark.parametrize("mesh, world, backend, message", [
    (MeshConfig(dp_shard=2, tp=2), 6, "fsdp2",
     "parallel.mesh dp_replicate=1 x dp_shard=2 x tp=2 does not match the world size 6"),
    (MeshConfig(tp=4), 2, "fsdp2",
     "parallel.mesh dp_replicate=1 x dp_shard=-1 x tp=4 does not match the world size 2"),
    (MeshConfig(tp=2), 4, "deepspeed", "parallel.mesh.tp=2 needs parallel.backend=fsdp2 "
     "(got deepspeed)"),
    (MeshConfig(dp_replicate=2), 4, "ddp", "parallel.mesh.dp_replicate=2 needs "
     "parallel.backend=fsdp2 (got ddp)"),
    (MeshConfig(tp=0), 4, "fsdp2", "parallel.mesh.tp=0 must be >= 1"),
    (MeshConfig(dp_shard=0), 4, "fsdp2", "parallel.mesh.dp_shard=0 must be >= 1 (or -1: the "
     "rest)"),
])
def test_impossible_mesh_is_one_line_naming_the_key(mesh, world, backend, message):
    with pytest.raises(ValueError) as e:
        resolve_mesh(mesh, world, backend)
    assert str(e.value) == message


@pytest.mark.parametrize("model, message", [
    (ModelConfig(width=48, num_heads=3), "parallel.mesh.tp=2 does not divide model.num_heads=3"),
    (ModelConfig(width=32, num_heads=4, mlp_ratio=1.53125, mlp="gelu"), "parallel.mesh.tp=2 "
     "does not divide the MLP width 49 (model.width=32, model.mlp_ratio=1.53125)"),
    (ModelConfig(sigma_reparam=True), "model.sigma_reparam is not supported with "
     "parallel.mesh.tp=2"),
    (ModelConfig(dropout=0.1), "model.dropout is not supported with parallel.mesh.tp=2"),
    (ModelConfig(family="lm", lm=LMConfig(vocab_size=257)), "parallel.mesh.tp=2 does not "
     "divide model.lm.vocab_size=257 (the embedding and readout split by vocabulary; pad the "
     "vocabulary)"),
])
def test_model_that_tp_cannot_split_is_one_line(model, message):
    with pytest.raises(ValueError) as e:
        check_model_for_tp(model, 2)
    assert str(e.value) == message


def test_clipping_across_meshes_equals_clipping_all_at_once():
    """Groups (one per mesh) share one global norm; every gradient is scaled by it."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    expected = [p.grad.clone() for p in params]
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in expected]))
    total = clip_across_meshes({None: params[:1], "tp": params[1:]}, 1.0)
    assert torch.allclose(total, norm) and norm > 1
    scale = 1.0 / (float(norm) + 1e-6)
    for p, g in zip(params, expected):
        assert torch.allclose(p.grad, g * scale)


def test_cli_reports_mesh_mismatch_on_one_line(tmp_path):
    """Through torchrun: every rank fails with the same one-line reason before training."""
    proc = run(2, "vit", ["parallel.mesh.tp=4", f"run.dir={tmp_path}"], check=False)
    assert proc.returncode != 0
    assert "parallel.mesh dp_replicate=1 x dp_shard=-1 x tp=4 does not match the world size 2" \
        in proc.stderr


# ---------------------------------------------------------------- 4 gloo ranks against 1

RECIPES = {"lm": "configs/lm_bytes.yaml", "vit": "configs/vit_digits.yaml",
           "dit": "configs/dit_digits.yaml"}
FAMILY_DATA = {
    "lm": ["model.attn_entropy=false", "data.seq_len=16", "model.lm.seq_len=16"],
    "vit": ["data.format=memory", "data.name=synthetic_images"],
    "dit": ["data.format=memory", "data.name=synthetic_images"],
}
TINY_MESH = [
    "model.width=32", "model.depth=2", "model.num_heads=4", "model.bias=false",
    "data.global_batch_size=8", "schedule.warmup_steps=2", "logging.every_steps=1",
    "logging.eval_every_steps=0", "logging.progress_bar=false", "logging.tensorboard=false",
]
# AdamW's eps at 1e-3 keeps its update linear in small gradients: at 1e-8 the normalised update
# turns the rounding noise of near-zero gradients (query/key at near-uniform attention, the key
# bias, whose exact gradient is 0) into differences of a fraction of the learning rate, so
# layouts that add partial sums in another order drift apart by ~1e-3 in 10 steps.
LINEAR_ADAM = ["optim.eps=1e-3"]
HSDP = ["parallel.mesh.dp_replicate=2", "parallel.mesh.dp_shard=2"]
TP = ["parallel.mesh.dp_shard=2", "parallel.mesh.tp=2"]
EVAL_AT_10 = ["logging.eval_every_steps=10", "logging.eval_batches=2"]


def mesh_args(nproc: int, family: str, overrides: list[str]) -> list[str]:
    backend = "parallel.backend=single" if nproc == 0 else "parallel.backend=fsdp2"
    return [*FAMILY_DATA[family], *TINY_MESH, backend, *overrides]


def run(nproc: int, family: str, overrides: list[str], check: bool = True,
        timeout: float = 400) -> subprocess.CompletedProcess:
    """One `pretrain train` through the CLI (torchrun for nproc ranks)."""
    proc = subprocess.run(train_cmd(nproc, mesh_args(nproc, family, overrides), RECIPES[family]),
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"training failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return proc


def assert_follows(losses: dict, reference: dict, rel: float, what: str) -> None:
    assert sorted(losses) == sorted(reference), what
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=rel), (what, step)


def val_metrics(run_dir) -> dict[str, float]:
    (last,) = [r for r in read_metrics(run_dir) if r["split"] == "val"]
    return {k: last[k] for k in ("loss", "accuracy")}


def assert_vocab_split(run_dir) -> None:
    """Every rank holds a 1/world share of the parameters, the embedding and readout included
    (only the norms' few weights are replicated over tp): the vocabulary is split, not
    replicated on the TP ranks."""
    stats = json.loads((run_dir / "model_stats.json").read_text())
    share = 4 * stats["params"] / len(stats["per_rank"])  # fp32 bytes
    for rank in stats["per_rank"]:
        assert rank["param_bytes"] == rank["param_bytes_predicted"] < 1.02 * share, rank


# ------------------------------------------------ the runs the comparisons read, batched
# A tiny run's steps take milliseconds and a launch seconds: the runs below start in one launch
# per world size (tests/train_runs_worker.py: the trainer's own train(), one run after another
# in one process group), once per module, and only those that the selected tests read.


def mesh_run(nproc: int, family: str, overrides: list[str], copy: str | None = None) -> Run:
    """A run of RUNS; `copy`: the run whose step-5 checkpoint it starts from."""
    return Run(nproc, RECIPES[family], tuple(mesh_args(nproc, family, overrides)),
               copy and (copy, CKPT_5))


CKPT_5 = "checkpoints/step_00000005"
NO_EVERY = ["checkpoint.every_steps=0"]
NO_SAVE = ["checkpoint.save_at_end=false"]
STEPS_10 = ["schedule.steps=10", *NO_EVERY, *LINEAR_ADAM]
LM_TIED = [*STEPS_10, *NO_SAVE, "model.lm.tie_embeddings=true", *EVAL_AT_10]
MUP = ["model.mup.enabled=true", "model.mup.base_width=16", "model.mup.zero_query=true",
       "model.mup.output_mult=2.0"]  # width 32 = 2x the base: every multiplier is not 1
# bf16 parameters (FSDP2's policy), fp32 reductions: TP's row-parallel partial sums are
# rounded to bf16 before they are added; measured 3e-4 over 6 steps
VISION_TP = {"vit": ("vit", [], 1e-5), "dit": ("dit", [], 1e-5), "vit-mup": ("vit", MUP, 1e-5),
             "vit-bf16": ("vit", ["parallel.mixed_precision=bf16"], 3e-3)}
SIGKILL = ["schedule.steps=14", "checkpoint.every_steps=3", "checkpoint.keep_last=2", *TP]
RESUME = ["schedule.steps=10", "checkpoint.every_steps=5", "checkpoint.keep_last=3", *NO_SAVE,
          *LINEAR_ADAM]
RESUME_MESHES = {"tp": (4, TP), "hsdp": (4, HSDP), "tp4": (4, ["parallel.mesh.tp=4"]),
                 "one": (0, [])}
TP_THEN_DP4 = ["schedule.steps=10", "checkpoint.every_steps=5", *LINEAR_ADAM]
AC = ["schedule.steps=4", *NO_EVERY, *NO_SAVE, *TP]
EAGER_TP = ["schedule.steps=3", *NO_EVERY, *NO_SAVE, *LINEAR_ADAM, *TP]
SEQUENCE_PARALLEL = {"lm": ("lm", []), "lm-tied": ("lm", ["model.lm.tie_embeddings=true"]),
                     "vit-peri": ("vit", ["model.vit.pooling=mean", "model.norm_placement=peri"])}
SP_COMMON = ["schedule.steps=6", *NO_EVERY, *NO_SAVE, *LINEAR_ADAM, *TP]

RUNS: dict[str, Run] = {
    "lm_one": mesh_run(0, "lm", [*STEPS_10, *EVAL_AT_10]),
    "lm_hsdp": mesh_run(4, "lm", [*STEPS_10, *HSDP, *NO_SAVE]),
    "lm_tp": mesh_run(4, "lm", [*STEPS_10, *TP, *EVAL_AT_10]),
    "lm_tied_one": mesh_run(0, "lm", LM_TIED),
    "lm_tied_tp": mesh_run(4, "lm", [*LM_TIED, *TP]),
    **{f"{name}_{mesh}": mesh_run(nproc, family, [*STEPS_10, *NO_SAVE, *extra, *layout])
       for name, (family, extra, _) in VISION_TP.items()
       for mesh, nproc, layout in (("dp", 2, []), ("tp", 4, TP))},
    **{f"{family}_{mesh}": mesh_run(4, family, [*STEPS_10, *NO_SAVE, *layout])
       for family in ("vit", "dit") for mesh, layout in (("dp4", []), ("hsdp", HSDP))},
    "sigkill_ref": mesh_run(4, "lm", SIGKILL),
    "resume_dp4": mesh_run(4, "lm", RESUME),
    **{f"resume_{name}": mesh_run(nproc, "lm", [*RESUME, *layout], copy="resume_dp4")
       for name, (nproc, layout) in RESUME_MESHES.items()},
    "tp_then": mesh_run(4, "lm", [*TP_THEN_DP4, *TP]),
    "dp4_after_tp": mesh_run(4, "lm", TP_THEN_DP4, copy="tp_then"),
    "ac_plain": mesh_run(4, "vit", AC),
    "ac": mesh_run(4, "vit", [*AC, "parallel.activation_checkpointing=true"]),
    "eager_tp": mesh_run(4, "lm", EAGER_TP),
    **{f"sp_{name}_{mode}": mesh_run(4, family, [*SP_COMMON, *extra, *sp])
       for name, (family, extra) in SEQUENCE_PARALLEL.items()
       for mode, sp in (("tp", []), ("sp", ["parallel.mesh.sequence_parallel=true"]))},
}
BATCH = RunBatch(RUNS)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> Path:
    """A directory holding a run directory per name in RUNS that a selected test needs."""
    return BATCH.start(request, tmp_path_factory.mktemp("mesh_runs"), REPO, subprocess_env())


@pytest.mark.slow
@BATCH.needs("lm_one", "lm_hsdp", "lm_tp")
def test_lm_hsdp_and_tp_follow_one_process_for_10_steps(runs):
    """fp32, same global batch, AdamW with LINEAR_ADAM: HSDP and TP within 1e-4 of one
    process at every step, the tolerance of plain FSDP2 (tests/test_distributed.py): each
    data-parallel rank averages over its own valid targets (packed rows mask document
    boundaries), so the mean of rank means is not quite the one-process mean. Measured at
    step 10: HSDP 1e-6, TP 2e-6; the largest, 3e-5, at step 9. Under TP the embedding and
    readout are split by vocabulary and the loss is vocabulary-parallel; the validation loss
    and accuracy (argmax over split logits) agree too."""
    one = train_losses(runs / "lm_one")
    assert sorted(one) == list(range(1, 11))
    assert_follows(train_losses(runs / "lm_hsdp"), one, 1e-4, "hsdp")
    assert_follows(train_losses(runs / "lm_tp"), one, 1e-4, "tp")
    assert_follows(val_metrics(runs / "lm_tp"), val_metrics(runs / "lm_one"), 1e-4, "val")
    assert_vocab_split(runs / "lm_tp")
    # The TP checkpoint holds the single-device layout (fused qkv/SwiGLU rows unpermuted).
    single, sharded = final_weights(runs / "lm_one"), final_weights(runs / "lm_tp")
    assert single.keys() == sharded.keys()
    for name, value in single.items():
        assert torch.allclose(sharded[name], value, atol=1e-4), name


@pytest.mark.slow
@BATCH.needs("lm_tied_one", "lm_tied_tp")
def test_lm_tied_embeddings_under_tp_follow_one_process(runs):
    """Tied readout: the logits multiply the final norm's output by the vocabulary-split
    embedding matrix, whose gradient gathers both uses; within 1e-4 of one process over 10
    steps (as untied, above), validation loss and accuracy included."""
    one, tp = runs / "lm_tied_one", runs / "lm_tied_tp"
    assert sorted(train_losses(one)) == list(range(1, 11))
    assert_follows(train_losses(tp), train_losses(one), 1e-4, "tied")
    assert_follows(val_metrics(tp), val_metrics(one), 1e-4, "val")
    assert_vocab_split(tp)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VISION_TP))
@BATCH.needs(*(f"{name}_{mesh}" for name in VISION_TP for mesh in ("dp", "tp")))
def test_vision_tp_follows_data_parallel_for_10_steps(runs, name):
    """ViT and DiT (adaLN) at (dp_shard=2, tp=2) against dp_shard=2 on 2 ranks (DiT draws its
    noise per data-parallel rank, so that is its reference), within 1e-5 at every step.
    (Without LINEAR_ADAM they drift ~3e-3 apart by step 10; a clipping bug, gradients of one
    mesh left unclipped, showed here as 1e-3 at step 2.) Under muP the per-group lr/wd
    multipliers, the attention scale, the readout multiplier and the zero query init hold on
    the TP-sharded parameters: the same trajectory."""
    dp, tp = train_losses(runs / f"{name}_dp"), train_losses(runs / f"{name}_tp")
    assert sorted(dp) == list(range(1, 11))
    assert_follows(tp, dp, VISION_TP[name][2], name)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["vit", "dit"])
@BATCH.needs("vit_dp4", "vit_hsdp", "dit_dp4", "dit_hsdp")
def test_vision_hsdp_follows_data_parallel_for_10_steps(runs, family):
    """ViT and DiT at (dp_replicate=2, dp_shard=2) against dp_shard=4 on 4 ranks: the same four
    data-parallel ranks (so the DiT draws the same noise), parameters sharded in groups of two
    and replicated across the groups instead of sharded over all four; within 1e-5 at every
    step (the LM's HSDP is checked against one process above)."""
    dp4, hsdp = train_losses(runs / f"{family}_dp4"), train_losses(runs / f"{family}_hsdp")
    assert sorted(dp4) == list(range(1, 11))
    assert_follows(hsdp, dp4, 1e-5, family)


@pytest.mark.slow
@BATCH.needs("sigkill_ref")
def test_sigkill_and_resume_on_a_tp_mesh_is_bitwise(runs, tmp_path):
    """The victim is killed and resumed through the CLI, each time a launch of its own; the
    reference ran in the batch (tests/train_runs_worker.py), so this also shows that a batched
    run ends bitwise where a run launched alone does."""
    victim = tmp_path / "victim"
    seed = random.randrange(1 << 30)
    kill_step = random.Random(seed).randint(4, 10)
    killed_at = kill_run_at_step(
        train_cmd(4, [*mesh_args(4, "lm", SIGKILL), f"run.dir={victim}"], RECIPES["lm"]),
        victim, kill_step)
    resumed_step = resumed_from(run(4, "lm", [*SIGKILL, f"run.dir={victim}"]))
    assert 3 <= resumed_step <= killed_at, (resumed_step, killed_at)
    assert read_status(victim)["state"] == "completed"
    ref, resumed = final_weights(runs / "sigkill_ref"), final_weights(victim)
    assert ref.keys() == resumed.keys()
    mismatched = [k for k in ref if not torch.equal(ref[k], resumed[k])]
    assert not mismatched, f"killed at {killed_at} (seed {seed}): {mismatched[:5]} differ"


@pytest.mark.slow
@BATCH.needs("resume_dp4", *(f"resume_{name}" for name in RESUME_MESHES))
def test_dp_shard_4_checkpoint_resumes_on_tp_mesh_and_one_process(runs):
    """A DCP checkpoint written at dp_shard=4 continues at (dp_shard=2, tp=2), at
    (dp_replicate=2, dp_shard=2), at tp=4 and on one process, the loss following the original
    run."""
    ref_losses = train_losses(runs / "resume_dp4")
    assert sorted(ref_losses) == list(range(1, 11))
    for name in RESUME_MESHES:
        losses = train_losses(runs / f"resume_{name}")
        assert sorted(losses) == list(range(6, 11)), f"{name}: must continue from step 6"
        for step in losses:
            # 1e-4: a mesh with another dp size averages other per-rank means (see above)
            assert losses[step] == pytest.approx(ref_losses[step], rel=1e-4), (name, step)


@pytest.fixture(scope="module")
def tp_then_dp4(runs) -> tuple[Path, Path]:
    """A (dp_shard=2, tp=2) run of 10 steps, and a dp_shard=4 run continuing its step-5
    checkpoint to step 10: one run's trajectory, both ending in a checkpoint at step 10."""
    return runs / "tp_then", runs / "dp4_after_tp"


@pytest.mark.slow
@BATCH.needs("tp_then", "dp4_after_tp")
def test_tp_checkpoint_resumes_at_dp_shard_4(tp_then_dp4):
    """The other way: a (dp_shard=2, tp=2) checkpoint, its embedding and readout split by
    vocabulary, continues at dp_shard=4 following the TP run's own losses."""
    tp, dp4 = tp_then_dp4
    losses = train_losses(dp4)
    assert sorted(losses) == list(range(6, 11)), "must continue from step 6"
    assert_follows(losses, {s: v for s, v in train_losses(tp).items() if s > 5}, 1e-4, "dp4")


def ckpt_cli(*argv: str) -> None:
    from pretrain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0, argv


@pytest.mark.slow
@BATCH.needs("tp_then", "dp4_after_tp")
def test_convert_and_export_from_a_tp_checkpoint_match_data_parallel(tp_then_dp4, tmp_path):
    """`ckpt convert --to deepspeed` and `ckpt export --format hf` of the TP run's step-10
    checkpoint: exactly the tensors (and AdamW moments) its DCP checkpoint holds in the
    single-device layout, and within 1e-4 of the same conversions of the dp_shard=4 run's
    step 10 (one trajectory: a row permuted by the TP layout would differ by O(1))."""
    from safetensors.torch import load_file

    from pretrain.checkpoint.convert import open_source
    from pretrain.checkpoint.convert.sources import EXP_AVG, EXP_AVG_SQ, PARAM

    converted, exported = {}, {}
    for name, run_dir in zip(("tp", "dp4"), tp_then_dp4):
        ckpt = run_dir / "checkpoints" / "step_00000010"
        ckpt_cli("ckpt", "convert", "--to", "deepspeed", str(ckpt), str(tmp_path / f"ds_{name}"))
        ckpt_cli("ckpt", "export", "--format", "hf", str(ckpt), str(tmp_path / f"hf_{name}"))
        converted[name] = open_source(tmp_path / f"ds_{name}" / "step_00000010")
        exported[name] = load_file(str(tmp_path / f"hf_{name}" /
                                       "model-00001-of-00001.safetensors"))
        if name == "tp":
            dcp = open_source(ckpt)
            assert sorted(converted[name].params) == sorted(dcp.params)
            for tensor in dcp.params:
                for kind in (PARAM, EXP_AVG, EXP_AVG_SQ):
                    want, got = dcp.read(tensor, kind), converted[name].read(tensor, kind)
                    assert torch.equal(got, want), (tensor, kind)
    tp_ds, dp_ds = converted["tp"], converted["dp4"]
    assert sorted(tp_ds.params) == sorted(dp_ds.params)
    for tensor in tp_ds.params:
        assert torch.allclose(tp_ds.read(tensor), dp_ds.read(tensor), atol=1e-4), tensor
    assert exported["tp"].keys() == exported["dp4"].keys()
    assert "lm_head.weight" in exported["tp"]
    for key, value in exported["dp4"].items():
        assert torch.allclose(exported["tp"][key], value, atol=1e-4), key


@pytest.mark.slow
@BATCH.needs("ac_plain", "ac")
def test_activation_checkpointing_on_a_tp_mesh_is_exact(runs):
    """TP is applied before activation checkpointing wraps the blocks: the recompute of a
    TP-split block gives bitwise the same losses."""
    plain = train_losses(runs / "ac_plain")
    assert sorted(plain) == list(range(1, 5))
    assert train_losses(runs / "ac") == plain


@pytest.mark.slow
@BATCH.needs("eager_tp")
def test_compiled_blocks_on_a_tp_mesh_follow_eager(runs, tmp_path):
    """TP before compile: each TP-split block compiled (torch.compile on CPU, inductor) gives
    eager's losses within 1e-5 over 3 steps. Dynamo breaks the graph at SwiGLU's fc2 (the
    strided fused-output layout entering the row-wise projection ends in a host scalar
    read), so that part runs eagerly; the rest of each block is compiled. The compiled run is
    a CLI launch of its own."""
    run(4, "lm", [*EAGER_TP, "parallel.compile=true", f"run.dir={tmp_path / 'compiled'}"],
        timeout=900)
    eager = train_losses(runs / "eager_tp")
    assert sorted(eager) == [1, 2, 3]
    assert_follows(train_losses(tmp_path / "compiled"), eager, 1e-5, "compiled")


def test_sequence_parallel_refuses_what_it_cannot_split():
    from pretrain.engines.tp import check_tokens_split, sequence_parallel_plan
    from pretrain.models import build_model

    dit = build_model(ModelConfig(family="dit", width=32, num_heads=4, depth=1), seed=0)
    with pytest.raises(ValueError, match="not supported for DiT"):
        sequence_parallel_plan(dit)
    vit = build_model(ModelConfig(family="vit", width=32, num_heads=4, depth=1), seed=0)
    with pytest.raises(ValueError) as e:
        check_tokens_split(vit, 2)  # 16 patches + the cls token
    assert str(e.value).startswith("parallel.mesh.sequence_parallel: 17 tokens per sample do "
                                   "not split over tp=2")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEQUENCE_PARALLEL))
@BATCH.needs(*(f"sp_{name}_{mode}" for name in SEQUENCE_PARALLEL for mode in ("tp", "sp")))
def test_sequence_parallel_follows_tensor_parallel(runs, name):
    """Tokens split between the projections (norms, Peri-LN output norms, residual stream):
    the same losses as TP alone, which follows one process (above)."""
    tp = train_losses(runs / f"sp_{name}_tp")
    assert sorted(tp) == list(range(1, 7))
    assert_follows(train_losses(runs / f"sp_{name}_sp"), tp, 1e-5, name)
