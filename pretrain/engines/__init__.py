"""Engines by `parallel.backend`. Each module imports only what its backend needs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type names only: importing a backend must not pull in the others
    from torch import nn

    from pretrain.dist import DistEnv
    from pretrain.engines.base import Engine, LossFn
    from pretrain.models.config import ModelConfig
    from pretrain.optim_config import OptimConfig
    from pretrain.parallel_config import ParallelConfig

ENGINES = {
    "single": ("pretrain.engines.base", "Engine"),
    "ddp": ("pretrain.engines.ddp", "DDPEngine"),
    "fsdp2": ("pretrain.engines.fsdp2", "FSDP2Engine"),
    "deepspeed": ("pretrain.engines.deepspeed", "DeepSpeedEngine"),
}


def build_engine(
    model: nn.Module, loss_fn: LossFn, env: DistEnv, *, parallel: ParallelConfig,
    optim: OptimConfig, model_cfg: ModelConfig, global_batch_size: int,
) -> Engine:
    """The `parallel.backend` engine around `model`, with its optimizer built from `optim` and the
    muP multipliers of `model_cfg`; `global_batch_size` is for backends that own batching."""
    backend = parallel.backend
    if backend == "single" and env.world_size > 1:
        raise ValueError(
            f"parallel.backend=single cannot run on {env.world_size} processes; use ddp or fsdp2"
        )
    module, cls = ENGINES[backend]
    try:
        engine_cls = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise ValueError(f"parallel.backend={backend!r} is not available: {e}") from e
    return engine_cls(
        model,
        loss_fn,
        env,
        parallel=parallel,
        optim=optim,
        model_cfg=model_cfg,
        global_batch_size=global_batch_size,
    )
