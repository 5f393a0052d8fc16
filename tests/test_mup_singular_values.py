"""The σ_max diagnostic: matches an SVD, covers the matrix roles, works on FSDP2 DTensors."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from pretrain.config import TrainConfig
from pretrain.dist import init_distributed
from pretrain.engines.fsdp2 import apply_fsdp
from pretrain.models import build_model
from pretrain.mup.singular_values import top_singular_values


def small_model():
    cfg = TrainConfig()
    cfg.model.width, cfg.model.depth, cfg.model.num_heads = 32, 1, 2
    cfg.model.mup.enabled, cfg.model.mup.base_width = True, 16
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_top_singular_value_matches_svd_for_matrix_roles():
    model = small_model()
    kinds = model.param_kinds()
    sv = top_singular_values(model, kinds)
    assert set(sv) == {n for n, k in kinds.items() if k in ("hidden", "readout")}
    for name, p in model.named_parameters():
        if name in sv:
            assert sv[name] == pytest.approx(torch.linalg.svdvals(p.detach())[0].item(), rel=1e-5)
    assert "patch_embed.weight" in top_singular_values(model)  # without roles: every 2-D weight


def test_top_singular_values_gather_fsdp2_shards():
    saved_env = dict(os.environ)  # init_distributed sets RANK/WORLD_SIZE/...: restore afterwards
    model = small_model()
    expected = top_singular_values(model, model.param_kinds())
    env = init_distributed("cpu", need_group=True)
    try:
        sharded = apply_fsdp(model, init_device_mesh("cpu", (env.world_size,)), bf16=False,
                             reshard_after_forward=True)
        assert hasattr(next(sharded.parameters()), "full_tensor")
        assert top_singular_values(sharded, small_model().param_kinds()) == pytest.approx(
            expected, rel=1e-6
        )
    finally:
        dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved_env)


def _probe(out: str) -> None:
    """Under torchrun: σ_max of a ZeRO-3 (partitioned) and an FSDP2 model, written by rank 0."""
    import json

    from pretrain.config import load_config
    from pretrain.mup.runner import build, setup
    from tests.conftest import TINY

    results = {}
    for backend in (
        ["parallel.backend=deepspeed", "parallel.deepspeed.zero_stage=3"],
        ["parallel.backend=fsdp2"],
    ):
        cfg = load_config(
            "configs/vit_digits.yaml",
            [*TINY, "model.mup.enabled=true", "model.mup.base_width=16", *backend],
        )
        engine = build(cfg, setup(cfg), seed=0)
        results[backend[-1]] = top_singular_values(engine.model, small_kinds(cfg))
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


def small_kinds(cfg) -> dict[str, str]:
    with torch.device("meta"):
        from pretrain.models import get_family

        return get_family(cfg.model.family).build(cfg.model).param_kinds()


@pytest.mark.slow
def test_top_singular_values_gather_zero3_and_fsdp2_at_two_ranks(tmp_path):
    import json
    import subprocess
    import sys

    from pretrain.config import load_config
    from tests.conftest import REPO, TINY, subprocess_env

    out = tmp_path / "sv.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.test_mup_singular_values", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    cfg = load_config(
        REPO / "configs/vit_digits.yaml",
        [*TINY, "model.mup.enabled=true", "model.mup.base_width=16"],
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    expected = top_singular_values(model, model.param_kinds())
    got = json.loads(out.read_text())
    for backend, values in got.items():
        assert values == pytest.approx(expected, rel=1e-5), backend


if __name__ == "__main__":
    import sys

    _probe(sys.argv[1])
