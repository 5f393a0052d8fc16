"""torchrun worker for tests/test_models_meta_init.py: per backend, a meta-built model wrapped
and materialised by its engine must hold exactly the eager build's initial values.

Prints one line `META_INIT <backend> <family> <mismatched names>` per case on rank 0.
"""

from __future__ import annotations

import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from pretrain.dist import init_distributed, shutdown
from pretrain.engines import build_engine
from pretrain.models import build_model, get_family
from pretrain.models.config import ModelConfig
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import ParallelConfig

OPTIONS = {"sigma_reparam": True, "qk_norm": True, "norm": "rmsnorm", "norm_placement": "peri"}


def model_config(family: str) -> ModelConfig:
    # width 36 / 3 heads: 3*36 qkv rows and the LM's 259-token vocabulary shard unevenly
    cfg = ModelConfig(family=family, width=36, depth=2, num_heads=3, **OPTIONS)
    cfg.lm.vocab_size, cfg.lm.tie_embeddings = 259, True
    cfg.mup.enabled, cfg.mup.base_width, cfg.mup.zero_query = True, 12, True
    return cfg


def main(backends: list[str]) -> None:
    env = init_distributed("cpu", need_group=True)
    for backend in backends:
        for family in ("vit", "dit", "lm"):
            cfg = model_config(family)
            eager = build_model(cfg, seed=7).state_dict()
            meta = build_model(cfg, seed=7, meta=True)
            parallel = ParallelConfig(backend=backend, activation_checkpointing=True)
            engine = build_engine(meta, get_family(family).loss, env, parallel=parallel,
                                  optim=OptimConfig(), model_cfg=cfg, global_batch_size=4)
            options = StateDictOptions(full_state_dict=True)
            got = get_model_state_dict(engine.model, options=options)
            bad = sorted(k for k in eager
                         if k not in got or not torch.equal(eager[k], got[k].cpu()))
            if env.is_main:
                print("META_INIT", backend, family, ",".join(bad) or "-", flush=True)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
