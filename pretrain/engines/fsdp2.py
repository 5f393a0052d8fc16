"""FSDP2 (`fully_shard`): each block and the root become DTensor-sharded across the ranks."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from pretrain.engines.base import Engine


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, bf16: bool, reshard_after_forward: bool
               ) -> nn.Module:
    """Shard every block of `model.blocks`, then the root (embeddings, head), over `mesh`:
    1-D shards over all its ranks; 2-D (replicate, shard) is HSDP."""
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for module in (*model.blocks, model):
        fully_shard(module, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


class FSDP2Engine(Engine):
    name = "fsdp2"
    shards_at_init = True  # a meta-built model allocates only this rank's shards
    uses_mesh = True

    def wrap(self, model: nn.Module) -> nn.Module:
        p = self.parallel
        return apply_fsdp(model, self.layout.dp_mesh(), p.mixed_precision == "bf16",
                          p.reshard_after_forward)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts parameters itself

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        self.model.set_requires_gradient_sync(is_last_micro_batch)
        return contextlib.nullcontext()

    def drop_gathered_weights(self) -> None:
        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
