"""torchrun worker for tests/test_models_meta_init.py: DeepSpeed ZeRO-3 with a meta-built model
(partitioned module by module as its values are written) against today's eager path (the whole
model built on every rank, then partitioned by `deepspeed.initialize`).

Per case prints on rank 0 `ZERO3_INIT <case> <family> <mismatched names>` comparing the gathered
parameters and buffers with the eager build, then `ZERO3_STEP <case> <family> <mismatches>`
comparing the meta-built engine with the eager-built one after a training step (loss, gathered
parameters, this rank's fp32 master partition). Cases: `mup` (σReparam, qk-norm, RMSNorm,
tied embeddings, zeroed query rows), `sp`, `bf16` (the muP model under bf16 parameters).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from pretrain.dist import init_distributed, shutdown
from pretrain.engines import build_engine
from pretrain.models import build_model, get_family
from pretrain.models.config import ModelConfig
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import DeepSpeedConfig, ParallelConfig

OPTIONS = {"sigma_reparam": True, "qk_norm": True, "norm": "rmsnorm", "norm_placement": "peri"}
WRAPPER = "_checkpoint_wrapped_module."  # activation checkpointing's prefix


def model_config(family: str, case: str) -> ModelConfig:
    if case == "sp":
        cfg = ModelConfig(family=family, width=36, depth=2, num_heads=3)
        cfg.lm.vocab_size = 259
        return cfg
    # width 36 / 3 heads: 3*36 qkv rows and the LM's 259-token vocabulary split unevenly
    cfg = ModelConfig(family=family, width=36, depth=2, num_heads=3, **OPTIONS)
    cfg.lm.vocab_size, cfg.lm.tie_embeddings = 259, True
    cfg.mup.enabled, cfg.mup.base_width, cfg.mup.zero_query = True, 12, True
    return cfg


def engine_for(model: nn.Module, cfg: ModelConfig, case: str, env):
    parallel = ParallelConfig(backend="deepspeed", activation_checkpointing=True,
                              mixed_precision="bf16" if case == "bf16" else "none",
                              deepspeed=DeepSpeedConfig(zero_stage=3))
    return build_engine(model, get_family(cfg.family).loss, env, parallel=parallel,
                        optim=OptimConfig(lr=1e-3), model_cfg=cfg, global_batch_size=4)


def gathered(engine) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the engine's module, full, under canonical names."""
    import deepspeed

    module = engine.model.module
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        return {k.replace(WRAPPER, ""): v.detach().clone() for k, v in tensors.items()}


def mismatches(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in want if k not in got or not torch.equal(want[k], got[k]))


def batch_for(family: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    if family == "lm":
        tokens = torch.randint(0, cfg.lm.vocab_size, (2, cfg.lm.seq_len + 1), generator=g)
        return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
    side, channels = cfg.vit.image_size, cfg.vit.in_channels
    if family == "dit":
        side, channels = cfg.dit.image_size, cfg.dit.in_channels
    return {"image": torch.randn(2, channels, side, side, generator=g),
            "label": torch.randint(0, 10, (2,), generator=g)}


def master_partition(engine) -> list[torch.Tensor]:
    return [t.detach().clone() for t in engine.optimizer.fp32_partitioned_groups_flat]


def main(cases: list[str]) -> None:
    env = init_distributed("cpu", need_group=True)
    for case in cases:
        for family in ("vit", "dit", "lm"):
            cfg = model_config(family, case)
            eager_model = build_model(cfg, seed=7)
            want = {**dict(eager_model.named_parameters()), **dict(eager_model.named_buffers())}
            if case == "bf16":  # DeepSpeed casts parameters (not buffers) to bf16
                names = dict(eager_model.named_parameters())
                want = {k: v.bfloat16() if k in names else v for k, v in want.items()}
            want = {k: v.detach().clone() for k, v in want.items()}
            # meta first: the trainer's order (no DeepSpeed engine exists yet in the process)
            meta = engine_for(build_model(cfg, seed=7, meta=True), cfg, case, env)
            eager = engine_for(eager_model, cfg, case, env)
            bad = mismatches(want, gathered(meta)) + mismatches(gathered(eager), gathered(meta))
            bad += [f"master{i}" for i, (a, b) in
                    enumerate(zip(master_partition(eager), master_partition(meta)))
                    if not torch.equal(a, b)]
            if env.is_main:
                print("ZERO3_INIT", case, family, ",".join(bad) or "-", flush=True)
            batch = batch_for(family, cfg)
            torch.manual_seed(5)  # DiT draws noise and times from the global RNG
            out_eager = eager.train_step([batch])
            torch.manual_seed(5)
            out_meta = meta.train_step([batch])
            bad = [] if torch.equal(out_eager.loss, out_meta.loss) else ["loss"]
            bad += mismatches(gathered(eager), gathered(meta))
            bad += [f"master{i}" for i, (a, b) in
                    enumerate(zip(master_partition(eager), master_partition(meta)))
                    if not torch.equal(a, b)]
            if env.is_main:
                print("ZERO3_STEP", case, family, ",".join(bad) or "-", flush=True)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
