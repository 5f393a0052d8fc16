"""Meta-device builds: a model built on `meta`, wrapped by its engine and then materialised holds
bit for bit the initial values of an eager build with the same seed (pretrain/models/
materialize.py), for every family, in one process, under 2-rank FSDP2 and DDP, and under 2-rank
DeepSpeed ZeRO-3 (partitioned module by module as the values are written)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from pretrain.dist import DistEnv
from pretrain.engines import build_engine
from pretrain.models import build_model, get_family
from pretrain.models.config import ModelConfig
from pretrain.models.materialize import InitPlan, on_meta
from pretrain.models.parametrization import initial_value
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import ParallelConfig
from tests.conftest import REPO, subprocess_env

FAMILIES = ("vit", "dit", "lm")
VARIANTS = {
    "sp": {},
    "all_options_mup": {"sigma_reparam": True, "qk_norm": True, "norm": "rmsnorm",
                        "norm_placement": "peri", "mup": True},
}


def model_config(family: str, variant: str) -> ModelConfig:
    options = dict(VARIANTS[variant])
    mup = options.pop("mup", False)
    cfg = ModelConfig(family=family, width=32, depth=2, num_heads=4, **options)
    cfg.lm.tie_embeddings = mup  # tied weights must be drawn once
    if mup:
        cfg.mup.enabled, cfg.mup.base_width, cfg.mup.zero_query = True, 8, True
    return cfg


def all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and every buffer, non-persistent ones (DiT's position table) included."""
    return dict(model.named_parameters()) | dict(model.named_buffers())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_meta_build_then_engine_equals_eager_build(family, variant):
    cfg = model_config(family, variant)
    eager = build_model(cfg, seed=11)
    meta = build_model(cfg, seed=11, meta=True)
    assert on_meta(meta) and all(p.is_meta for p in meta.parameters())
    assert meta.output_mult == eager.output_mult  # forward multipliers are set on meta too
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    parallel = ParallelConfig(backend="single", activation_checkpointing=True)
    engine = build_engine(meta, get_family(family).loss, env, parallel=parallel,
                          optim=OptimConfig(), model_cfg=cfg, global_batch_size=4)
    assert not on_meta(engine.model)
    got = engine.state_dict()["model"]  # canonical names through the checkpoint wrapper
    want = eager.state_dict()
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    # non-persistent buffers are not in a state dict: compare them on a plain materialised copy
    plain = build_model(cfg, seed=11, meta=True)
    InitPlan(plain).apply(plain)
    want_all, got_all = all_tensors(eager), all_tensors(plain)
    assert [k for k in want_all if not torch.equal(want_all[k], got_all[k])] == []


def test_the_seed_decides_the_values_and_the_global_rng_decides_the_default_seed():
    cfg = model_config("lm", "sp")
    a, b = build_model(cfg, seed=1), build_model(cfg, seed=2)
    assert not torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    torch.manual_seed(5)
    c = build_model(cfg)
    torch.manual_seed(5)
    d = build_model(cfg)
    assert c.init_seed == d.init_seed
    assert torch.equal(c.tok_embed.weight, d.tok_embed.weight)


@pytest.mark.parametrize("family", FAMILIES)
def test_rule_for_vectors_is_what_the_modules_construct(family):
    """The meta path cannot read a module's constructed value, so `initial_value` states it
    (biases 0, gains 1): it must equal what each module builds eagerly."""
    cfg = model_config(family, "all_options_mup")
    built = get_family(family).build(cfg)
    kinds = built.param_kinds()
    for name, p in built.named_parameters():
        if kinds[name] == "vector":
            value = initial_value(name, p.shape, "vector", cfg, seed=0)
            if name.endswith("bias"):
                continue  # nn.Linear draws its bias at random; the parametrization zeroes it
            assert torch.equal(value, p.detach()), name


def test_a_buffer_without_an_init_rule_fails_loudly():
    cfg = model_config("vit", "sp")
    model = build_model(cfg, seed=0, meta=True)
    model.blocks[0].register_buffer("stray", torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="blocks.0.stray has no init rule"):
        InitPlan(model).apply(model)


@pytest.mark.slow
def test_fsdp2_and_ddp_shards_equal_the_eager_build_on_two_ranks():
    """Uneven shards (a 259-token vocabulary over 2 ranks), muP's zeroed query rows, σReparam's
    converged u, tied embeddings, activation checkpointing."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "tests/meta_init_worker.py", "fsdp2", "ddp"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("META_INIT")]
    assert {(b, f) for _, b, f, _ in lines} == {(b, f) for b in ("fsdp2", "ddp") for f in FAMILIES}
    assert [line for line in lines if line[3] != "-"] == []


@pytest.mark.slow
def test_zero3_partitions_equal_the_eager_build_and_train_alike_on_two_ranks():
    """DeepSpeed ZeRO-3 with a meta-built model, partitioned module by module: the gathered
    parameters and buffers equal the eager build bit for bit (muP with every option, SP, and
    bf16 parameters), the fp32 master partitions equal those of today's path (the whole model
    handed to deepspeed.initialize), and so do the loss and weights after a training step."""
    pytest.importorskip("deepspeed")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "tests/zero3_init_worker.py", "mup", "sp", "bf16"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("ZERO3_")]
    cases = {(kind, case, family) for kind in ("ZERO3_INIT", "ZERO3_STEP")
             for case in ("mup", "sp", "bf16") for family in FAMILIES}
    assert {(k, c, f) for k, c, f, _ in lines} == cases
    assert [line for line in lines if line[3] != "-"] == []


@pytest.mark.slow
def test_zero3_meta_init_holds_a_partition_not_the_model(tmp_path):
    """Peak RSS per rank (VmHWM) once a 152M-parameter LM (579 MiB fp32, 48 narrow blocks so one
    parameter is small against the model) is initialised under 2-rank ZeRO-3: this rank's half,
    plus the drawing of one parameter (torch's trunc_normal_ holds a few copies of it) and
    allocator slack; an eager build holds the whole model on every rank by then."""
    pytest.importorskip("deepspeed")
    cmd = [sys.executable, "bench/bench_meta_init.py", "--backend", "zero3", "--modes", "meta",
           "--width", "512", "--depth", "48", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(ranks) == 2
    for r in ranks:
        assert r["local_shard_mb"] == pytest.approx(r["model_mb"] / 2, rel=0.01)
        bound = r["local_shard_mb"] + 8 * r["largest_param_mb"] + 48
        assert r["init_peak_rise_mb"] < bound < 0.7 * r["model_mb"], r
