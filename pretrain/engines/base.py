"""The engine interface: everything the trainer loop needs from a parallelism backend.

The loop calls `train_step`, `eval_step`, `set_lr`; the checkpoint package takes the state with
`state_dict` and gives it back with `load_state_dict`, writing it in the format the class
attribute `checkpoint_format` names. Single process, DDP and FSDP2 differ only in how
`wrap` transforms the model and how gradient sync is deferred during accumulation; they share
one DCP checkpoint format (`get_state_dict` gives canonical parameter names), so checkpoints
move freely between them and between world sizes. DeepSpeed uses its own format.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain import compat
from pretrain.compat import checkpoint_wrapper
from pretrain.device_defaults import describe_device, resolve_optim, resolve_parallel
from pretrain.dist import DistEnv, all_reduce_sum
from pretrain.engines.ema import WeightEMA
from pretrain.mesh import MeshLayout, build_layout, check_model_for_tp, resolve_mesh
from pretrain.models.config import ModelConfig
from pretrain.models.materialize import InitPlan, on_meta
from pretrain.optim import build_optimizer, set_lr
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import ParallelConfig

LossFn = Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class StepOutput:
    """One optimizer step's results, left on the device: the loop reads them at log steps."""

    loss: torch.Tensor  # mean over micro-batches and ranks
    grad_norm: torch.Tensor  # global, before clipping
    finite: torch.Tensor  # bool: both finite (identical on every rank: both are global values)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    for i, block in enumerate(model.blocks):
        model.blocks[i] = checkpoint_wrapper(block)


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (parameter names are unchanged)."""
    for block in model.blocks:
        block.compile()


def params_by_mesh(params: list[torch.Tensor]) -> dict[object, list[torch.Tensor]]:
    """Parameters grouped by the DeviceMesh their gradients live on (None: plain tensors)."""
    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        groups.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
    return groups


def clip_across_meshes(by_mesh: dict[object, list[torch.Tensor]], max_norm: float
                       ) -> torch.Tensor:
    """Global gradient norm of parameters living on different meshes (a norm per mesh,
    reduced over that mesh, then combined), every group clipped by it. torch's
    clip_grad_norm_ stacks all norms into one tensor, which DTensors on different meshes
    cannot share."""
    norms = []
    for params in by_mesh.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    for params in by_mesh.values():
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


class Engine:
    """Single-process engine; subclasses override `wrap` and `sync_context`."""

    name = "single"
    checkpoint_format = "dcp"  # how pretrain.checkpoint writes and reads this engine's state
    _updates_held_by = None  # a background checkpoint copy still reading the live state
    shards_at_init = False  # True: a meta-built model is materialised after `wrap`, as shards
    uses_mesh = False  # True: builds the DeviceMesh of `parallel.mesh` (pretrain/mesh.py)
    vocab_parallel = False  # True: the LM's logits are split by vocabulary over the TP ranks
    _pending_init: InitPlan | None = None
    ema: WeightEMA | None = None  # optim.ema_decay > 0

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, env: DistEnv, *, parallel: ParallelConfig,
        optim: OptimConfig, model_cfg: ModelConfig, global_batch_size: int,
    ):
        self.env, self.loss_fn = env, loss_fn
        # global_batch_size: the loop splits batches for these backends; DeepSpeed needs it
        device = describe_device(env.device)  # `auto` settings, unless the trainer resolved them
        self.parallel = resolve_parallel(parallel, device)
        self.optim_cfg = optim = resolve_optim(optim, device)
        self.layout = self.make_layout(model_cfg)
        kinds = self.prepare(model)
        self.model = self.wrap(model)
        self.materialize(self.model)
        self.optimizer = build_optimizer(self.model, kinds, optim, model_cfg)
        if optim.ema_decay > 0:
            self.ema = WeightEMA(self.model, optim.ema_decay)

    def make_layout(self, model_cfg: ModelConfig) -> MeshLayout:
        """This rank's place in `parallel.mesh` (checked against the backend and the model);
        the DeviceMesh itself only for a backend that shards over it."""
        shape = resolve_mesh(self.parallel.mesh, self.env.world_size, self.name)
        check_model_for_tp(model_cfg, shape.tp)
        return build_layout(shape, self.env.rank, self.env.device, self.uses_mesh)

    def prepare(self, model: nn.Module) -> dict[str, str]:
        """Device, tensor parallelism, activation checkpointing, compile (in that order, before
        sharding); returns the parameters' muP roles, read before any wrapper renames them.

        A model built on `meta` (`build_model(..., meta=True)`) is allocated and initialised
        here on the device, or, for an engine that `shards_at_init`, by `materialize` after
        `wrap`, so each rank allocates only its shards.
        """
        kinds = model.param_kinds()
        self._pending_init = InitPlan(model) if on_meta(model) else None
        if self._pending_init is None:
            model.to(self.env.device)
        elif not self.shards_at_init:
            self.materialize(model)
        if self.layout.shape.tp > 1:
            from pretrain.engines.tp import apply_tp

            self.vocab_parallel = apply_tp(model, self.layout.tp_mesh(),
                                           self.parallel.mesh.sequence_parallel)
        if self.parallel.activation_checkpointing:
            apply_activation_checkpointing(model)
        if self.parallel.compile is True:  # "auto" unresolved (no trainer): eager
            apply_compile(model)
        return kinds

    def materialize(self, model: nn.Module) -> None:
        """Allocate a meta-built model on the device and write its initial values (once)."""
        plan, self._pending_init = self._pending_init, None
        if plan is not None:
            plan.apply(model, self.env.device)

    # ---- backend hooks
    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def sync_context(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Context in which backward runs; DDP/FSDP2 skip the gradient all-reduce until the last."""
        return contextlib.nullcontext()

    def loss_context(self) -> contextlib.AbstractContextManager:
        """Around a loss's forward and backward: the vocabulary-parallel cross-entropy when
        tensor parallelism split the LM's readout (pretrain/engines/tp.py)."""
        if not self.vocab_parallel:
            return contextlib.nullcontext()
        from pretrain.engines.tp import loss_context

        return loss_context(True)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.parallel.mixed_precision == "bf16":
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- loop interface
    def set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def to_device(self, batch: dict) -> dict:
        """The batch on this engine's device (what the model's forward expects)."""
        return {k: v.to(self.env.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict]) -> StepOutput:
        """Forward/backward over the micro-batches, clip, step; nothing read back to the host.

        The loss is reduced before the update so the divergence guard's flag (loss and grad
        norm finite, the same on every rank) can skip it on device (optim.on_nonfinite=skip).
        """
        self.model.train()
        n = len(micro_batches)
        loss_total = torch.zeros((), device=self.env.device)
        for i, batch in enumerate(micro_batches):
            with self.sync_context(i == n - 1), self.loss_context():
                with self.autocast():
                    loss, _ = self.loss_fn(self.model, self.to_device(batch))
                (loss / n).backward()
            loss_total += loss.detach().float()
        loss_mean = all_reduce_sum(loss_total / n, "all_reduce(loss)") / self.env.world_size
        grad_norm = self.clip_grad_norm()
        finite = torch.isfinite(loss_mean) & torch.isfinite(grad_norm)
        self.optimizer_step(finite)
        return StepOutput(loss_mean, grad_norm, finite)

    def clip_grad_norm(self) -> torch.Tensor:
        """Clip to optim.grad_clip; returns the global norm before clipping, on device."""
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else float("inf")
        params = [p for p in self.model.parameters() if p.grad is not None]
        by_mesh = params_by_mesh(params)
        if len(by_mesh) > 1:  # TP: block matrices on (dp, tp), the rest on dp alone
            return clip_across_meshes(by_mesh, max_norm)
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return norm.float()

    def optimizer_step(self, finite: torch.Tensor) -> None:
        if self.optim_cfg.on_nonfinite == "skip":
            compat.skip_update_where(self.optimizer, (~finite).float())
        if self._updates_held_by is not None:  # let an async checkpoint finish copying first
            self._updates_held_by.result()
            self._updates_held_by = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:  # a skipped (non-finite) update still counts as a step
            self.ema.update()

    @torch.no_grad()
    def eval_step(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-rank sums (loss_sum, count, ...) for one validation batch."""
        self.model.eval()
        with self.autocast(), self.loss_context():
            _, stats = self.loss_fn(self.model, self.to_device(batch))
        return {k: v.detach().float() for k, v in stats.items()}

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside the block the model holds its EMA weights (evaluation, samples); a no-op
        without an EMA."""
        if self.ema is None:
            yield
            return
        self.drop_gathered_weights()
        with self.ema.swapped_in():
            try:
                yield
            finally:
                self.drop_gathered_weights()

    def drop_gathered_weights(self) -> None:
        """Forget any full copy of the weights gathered from their shards (FSDP2 keeps one
        after a forward when it does not reshard), so the next forward reads the shards."""

    # ---- checkpoint interface
    def state_dict(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])

    def hold_updates_until(self, future) -> None:
        """The next optimizer step waits for `future` (a checkpoint copying the live state)."""
        self._updates_held_by = future

    def close(self) -> None:
        """Release what the engine's objects keep alive beyond Python's reach (nothing here);
        called once its owner is done with it, before `pretrain.dist.shutdown`."""
