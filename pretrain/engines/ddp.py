"""DistributedDataParallel: a full replica per rank, gradients all-reduced in buckets."""

from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrain.engines.base import Engine


class DDPEngine(Engine):
    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if is_last_micro_batch else self.model.no_sync()
