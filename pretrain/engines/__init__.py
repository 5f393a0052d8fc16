"""Engines by `parallel.backend`. Each module imports only what its backend needs."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pretrain.config imports engines.deepspeed_config: keep this package light
    from torch import nn

    from pretrain.config import TrainConfig
    from pretrain.dist import DistEnv
    from pretrain.engines.base import Engine, LossFn

ENGINES = {
    "single": ("pretrain.engines.base", "Engine"),
    "ddp": ("pretrain.engines.ddp", "DDPEngine"),
    "fsdp2": ("pretrain.engines.fsdp2", "FSDP2Engine"),
    "deepspeed": ("pretrain.engines.deepspeed", "DeepSpeedEngine"),
}


def build_engine(model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, env: DistEnv) -> Engine:
    backend = cfg.parallel.backend
    if backend == "single" and env.world_size > 1:
        raise ValueError(f"parallel.backend=single cannot run on {env.world_size} processes; use ddp or fsdp2")
    module, cls = ENGINES[backend]
    try:
        engine_cls = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise ValueError(f"parallel.backend={backend!r} is not available: {e}") from e
    return engine_cls(model, loss_fn, cfg, env)
