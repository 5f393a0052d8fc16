"""DeepSpeed ZeRO stage 1/2/3 behind the engine interface.

The model is plain PyTorch, the optimizer is the project's torch AdamW over the
parametrization's param groups (lr_mult / wd_mult ride along in each group), and DeepSpeed
shards it. A model built on `meta` (the trainer's path) is materialised whole on every rank for
ZeRO-1/2, which keep full parameters by design (they partition optimizer state and gradients
only); under ZeRO-3 it is materialised module by module, each module's parameters partitioned as
soon as they are written (`materialize_zero3`), so a rank's peak host memory at init is about one
module's full parameters plus its 1/N of the model, with the same values an eager build has.
Checkpoints are DeepSpeed's own format (`checkpoint_format = "deepspeed"`): the
checkpoint package saves and loads them through `self.model`, DeepSpeed's engine
(pretrain/checkpoint/deepspeed_format.py).
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pretrain import compat
from pretrain.dist import DistEnv, all_reduce_sum
from pretrain.engines.base import Engine, LossFn, StepOutput
from pretrain.engines.deepspeed_config import ds_config
from pretrain.engines.ema import WeightEMA
from pretrain.models.config import ModelConfig
from pretrain.optim import build_optimizer
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import ParallelConfig


def import_deepspeed(shm_comm: bool):
    """Import DeepSpeed quietly; unless asked, mark its JIT-built CPU shm all-reduce unusable."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import deepspeed
    import deepspeed.ops

    if not shm_comm:
        # Read (and cached) by deepspeed.comm's TorchBackend before it would JIT-build the op.
        compat.deepspeed_disable_op(deepspeed, compat.deepspeed_cpu_shm_comm_builder().NAME)
    return deepspeed


class DeepSpeedEngine(Engine):
    name = "deepspeed"
    checkpoint_format = "deepspeed"  # DeepSpeed's own files, written by its engine

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, env: DistEnv, *, parallel: ParallelConfig,
        optim: OptimConfig, model_cfg: ModelConfig, global_batch_size: int,
    ):
        if optim.on_nonfinite == "skip":
            raise ValueError("optim.on_nonfinite=skip is not supported by parallel.backend="
                             "deepspeed (DeepSpeed applies the update itself); use fail")
        if optim.ema_decay > 0 and parallel.deepspeed.zero_stage == 3:
            raise ValueError("optim.ema_decay is not supported by DeepSpeed ZeRO-3 (its gathered "
                             "and persistent parameters); use ZeRO-1/2 or fsdp2")
        self.env, self.loss_fn = env, loss_fn
        self.parallel, self.optim_cfg = parallel, optim
        self.layout = self.make_layout(model_cfg)  # a flat mesh: tp/dp_replicate are refused
        self.shards_at_init = parallel.deepspeed.zero_stage == 3
        kinds = self.prepare(model)
        deepspeed = import_deepspeed(parallel.deepspeed.shm_comm)
        config = ds_config(parallel, optim, global_batch_size, env.world_size)
        self.materialize_zero3(model, deepspeed, config)
        optimizer = build_optimizer(model, kinds, optim, model_cfg)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False,
        )
        if optim.ema_decay > 0:  # ZeRO-1/2: the full module on every rank
            self.ema = WeightEMA(self.model.module, optim.ema_decay)

    def materialize_zero3(self, model: nn.Module, deepspeed, config: dict) -> None:
        """Allocate a meta-built model (ZeRO-3) one module at a time, each module's parameters
        handed to ZeRO-3's partitioning as soon as their values are written."""
        plan, self._pending_init = self._pending_init, None
        if plan is None:
            return
        from deepspeed.accelerator import get_accelerator

        # zero.Init reads the world size from deepspeed.comm, which deepspeed.initialize would
        # otherwise set up only later (over the same torch process group, as here)
        deepspeed.init_distributed(get_accelerator().communication_backend_name(),
                                   dist_init_required=False)
        dtype = torch.bfloat16 if self.parallel.mixed_precision == "bf16" else torch.float32
        partition = compat.deepspeed_zero3_partitioner(deepspeed, config, dtype)
        plan.apply(model, self.env.device, partition=partition)

    def train_step(self, micro_batches: list[dict]) -> StepOutput:
        """DeepSpeed scales each backward by 1/accum and steps (clip, AdamW) at the last
        micro-batch.

        Under bf16 DeepSpeed holds bf16 parameters; the base autocast casts fp32 inputs to match.
        DeepSpeed applies the update itself, so the divergence guard can only fail the run here.
        """
        self.model.train()
        n = len(micro_batches)
        loss_total = torch.zeros((), device=self.env.device)
        for batch in micro_batches:
            with self.autocast():
                loss, _ = self.loss_fn(self.model, self.to_device(batch))
            self.model.backward(loss)
            self.model.step()
            loss_total += loss.detach().float()
        if self.ema is not None:  # DeepSpeed stepped at the last micro-batch
            self.ema.update()
        norm = self.model.get_global_grad_norm()
        if not isinstance(norm, torch.Tensor):  # a float, or None before the first step
            norm = torch.tensor(float("nan") if norm is None else norm)
        norm = norm.to(self.env.device, torch.float32)
        loss_mean = all_reduce_sum(loss_total / n, "all_reduce(loss)") / self.env.world_size
        return StepOutput(loss_mean, norm, torch.isfinite(loss_mean) & torch.isfinite(norm))

    def close(self) -> None:
        """Remove DeepSpeed's hooks. They close cycles through C++ autograd nodes (a parameter's
        hook holds the optimizer, which holds the parameters), which the garbage collector
        cannot see: the model, the optimizer and the process groups they name would live to
        interpreter exit, and a muP sweep would keep every variant it built."""
        self.model.destroy()
