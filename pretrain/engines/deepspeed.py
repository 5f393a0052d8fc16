"""DeepSpeed ZeRO stage 1/2/3 behind the engine interface.

The model is plain PyTorch, the optimizer is the project's torch AdamW over the
parametrization's param groups (lr_mult / wd_mult ride along in each group), and DeepSpeed
shards it. Checkpoints are DeepSpeed's own format in `<ckpt>/model/` (written by
`save_checkpoint`, tag = "model"), loaded through `SafeCheckpointEngine` so no file is
unpickled beyond `weights_only` plus an allow-list of DeepSpeed's plain-data classes. A
directory holding a universal checkpoint (`zero/<param>/...`, what `pretrain ckpt convert
--to deepspeed` writes) is loaded with DeepSpeed's universal loader at any world size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from pretrain.ckpt.torch_files import safe_torch_load
from pretrain.dist import DistEnv, all_reduce_sum
from pretrain.engines.base import Engine, LossFn
from pretrain.engines.config import ParallelConfig
from pretrain.engines.deepspeed_config import ds_config
from pretrain.models.config import ModelConfig
from pretrain.optim import build_optimizer, canonical_name
from pretrain.optim_config import OptimConfig

log = logging.getLogger(__name__)

def import_deepspeed(shm_comm: bool):
    """Import DeepSpeed quietly; unless asked, mark its JIT-built CPU shm all-reduce unusable."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import deepspeed
    import deepspeed.ops

    if not shm_comm:
        from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

        # Read (and cached) by deepspeed.comm's TorchBackend before it would JIT-build the op.
        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    return deepspeed


def make_safe_checkpoint_engine(config_params):
    """DeepSpeed's torch checkpoint engine with loads restricted to weights_only + allow-list."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location=map_location or "cpu")

    return SafeCheckpointEngine(config_params)


class DeepSpeedEngine(Engine):
    name = "deepspeed"
    supports_background_staging = False  # DeepSpeed saves through its own engine

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, env: DistEnv, *, parallel: ParallelConfig,
        optim: OptimConfig, model_cfg: ModelConfig, global_batch_size: int,
    ):
        self.env, self.loss_fn = env, loss_fn
        self.parallel, self.optim_cfg = parallel, optim
        kinds = self.prepare(model)
        deepspeed = import_deepspeed(parallel.deepspeed.shm_comm)
        optimizer = build_optimizer(model, kinds, optim, model_cfg)
        config = ds_config(parallel, optim, global_batch_size, env.world_size)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False,
        )
        self.model.checkpoint_engine = make_safe_checkpoint_engine(self.model._config)
        self._warned_async = False

    def train_step(self, micro_batches: list[dict]) -> tuple[float, float]:
        """DeepSpeed scales each backward by 1/accum and steps (clip, AdamW) at the last micro-batch.

        Under bf16 DeepSpeed holds bf16 parameters; the base autocast casts fp32 inputs to match.
        """
        self.model.train()
        n = len(micro_batches)
        loss_total = torch.zeros((), device=self.env.device)
        for batch in micro_batches:
            with self.autocast():
                loss, _ = self.loss_fn(self.model, self._to_device(batch))
            self.model.backward(loss)
            self.model.step()
            loss_total += loss.detach().float()
        norm = self.model.get_global_grad_norm()
        norm = float(norm.item() if isinstance(norm, torch.Tensor) else (norm if norm is not None else float("nan")))
        loss_mean = all_reduce_sum(loss_total / n) / self.env.world_size
        return float(loss_mean), norm

    # ---- checkpoint interface: DeepSpeed's own format in <ckpt>/model/
    def save_model_state(self, path: Path, process_group=None, use_async: bool = False):
        if use_async and not self._warned_async and self.env.is_main:
            log.warning("checkpoint.async_save is not supported by the deepspeed backend; saving synchronously")
            self._warned_async = True
        # DeepSpeed writes <save_dir>/<tag>/: tag = "model" puts its files in <ckpt>/model/.
        self.model.save_checkpoint(str(path.parent), tag=path.name, save_latest=False)
        return None

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter names and full shapes (ZeRO-3 keeps the full shape in ds_shape)."""
        return {canonical_name(n): tuple(getattr(p, "ds_shape", p.shape)) for n, p in self.model.module.named_parameters()}

    def load_model_state(self, path: Path, process_group=None) -> None:
        from pretrain.ckpt.deepspeed_load import check_loadable

        d = self.parallel.deepspeed
        universal = check_loadable(path, d.zero_stage, self.env.world_size, self.expected_shapes())
        self.model._config.load_universal_checkpoint = universal
        # Group hyperparameters come from the config (as at start); DeepSpeed's ZeRO-3 universal
        # loader copies group 0's onto every group, which would lose per-group weight decay.
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        load_path, _ = self.model.load_checkpoint(
            str(path.parent), tag=path.name, load_lr_scheduler_states=False, load_module_strict=True,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
        for group, saved in zip(self.optimizer.param_groups, hyper):
            group.update(saved)
        # The ZeRO-3 universal loader puts one `step` tensor object into every group's state;
        # AdamW increments it in place once per group, so the groups' steps would run ahead.
        for state in self.optimizer.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()
