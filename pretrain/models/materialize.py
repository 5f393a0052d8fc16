"""Writing a model's initial values, on a plain model or on one built on the `meta` device and
already wrapped (activation checkpointing, compile, FSDP2), one tensor at a time.

Why values are drawn per tensor: a large model is built on `meta` (no memory), parallelism is
applied, and only then does each rank allocate its shards (`to_empty`) and fill them, as in
torchtitan. For those shards to equal an eager build, a tensor's value cannot depend on a
global RNG stream consumed in module order on full tensors (the meta build draws nothing, and a
rank sees only its shards). So each parameter's value is `parametrization.initial_value`: drawn
on the CPU from a generator seeded by (run seed, canonical name), one full tensor at a time
(peak extra host memory: the largest parameter), then sliced to the rank's shard with
`distribute_tensor(..., src_data_rank=None)` (no communication: every rank computes the same
full tensor). The eager build goes through this same code, so eager and meta builds agree bit
for bit on every family, backend and world size (tests/test_models_meta_init.py).

Buffers: σReparam's `u` starts from its own seeded draw and is converged by power iteration
on the full initial weight, and its `gamma` is then set to that estimate of σ(W₀) (unless
model.sigma_reparam_gamma_init = "one"), so W₀·γ/σ = W₀: the wrapped layer starts as the
plain one, as in Zhai et al.'s released code. Any other buffer belongs to a module that
recomputes it in `init_buffers()` (e.g. DiT's sin-cos position table). A buffer with neither
fails loudly instead of keeping `to_empty`'s garbage.

Where each engine materialises (pretrain/engines/base.py `prepare`): single and DDP allocate
the whole model on the device before wrapping (DDP replicates it anyway); FSDP2 after
`fully_shard`, so a rank holds only its shards. DeepSpeed ZeRO-3 materialises module by module
with a `partition` callback (pretrain/engines/deepspeed.py): each module's parameters are created
from their full values and handed to ZeRO-3, which keeps this rank's partition and frees the rest
before the next module is allocated. ZeRO-1/2 keep full parameters on every rank by design, so
they get the whole model, as single and DDP do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from pretrain.models.blocks import SigmaReparamLinear, power_iterate
from pretrain.models.parametrization import initial_value, query_slices, tensor_seed

SIGMA_PRIME_STEPS = 30  # power-iteration steps that converge u on the initial weight


def on_meta(model: nn.Module) -> bool:
    """True when any parameter or buffer of `model` has no storage yet."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def sigma_start_vector(weight: torch.Tensor, seed: int, name: str) -> torch.Tensor:
    """σReparam's left singular vector estimate `u`, converged on the full initial `weight`."""
    generator = torch.Generator().manual_seed(tensor_seed(seed, name))
    u = F.normalize(torch.randn(weight.shape[0], generator=generator), dim=0)
    return power_iterate(weight.float(), u, SIGMA_PRIME_STEPS)


def sigma_estimate(weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """σ(W) ≈ u^T W v, v = normalize(W^T u): SigmaReparamLinear.sigma's arithmetic, so γ set
    to it divides out exactly (γ/σ = 1) in a forward that does not step the iteration."""
    v = F.normalize(weight.t() @ u, dim=0)
    return u @ (weight @ v)


@torch.no_grad()
def fill(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the full CPU value into `target`, or into this rank's shard of a DTensor."""
    if isinstance(target, DTensor):
        full = distribute_tensor(full.to(target.device), target.device_mesh, target.placements,
                                 src_data_rank=None)
    target.copy_(full)


@functools.cache
def _libc_malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def return_freed_memory() -> None:
    """Hand the pages of freed heap chunks back to the OS (glibc `malloc_trim`; nothing
    elsewhere). Why: after the first large free, glibc serves allocations up to that size from
    its heap, and the full values freed between the partitions kept stay resident: measured on
    a 772 MB LM under 2-rank ZeRO-3, a rank's RSS after init was the whole model, not its half."""
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def adopt_value(module: nn.Module, attr: str, param: nn.Parameter, value: torch.Tensor,
                device: torch.device | str) -> nn.Parameter:
    """Replace meta parameter `attr` of `module` by one holding `value` (no second full copy:
    on the CPU the parameter takes `value`'s storage)."""
    new = nn.Parameter(value.to(device=device, dtype=param.dtype),
                       requires_grad=param.requires_grad)
    setattr(module, attr, new)
    return new


def allocate_buffers(module: nn.Module, device: torch.device | str) -> None:
    """Give `module`'s own meta buffers storage on `device` (values are written afterwards)."""
    for attr, buffer in module.named_buffers(recurse=False):
        if buffer.is_meta:
            setattr(module, attr, torch.empty_like(buffer, device=device))


class InitPlan:
    """What initialisation needs from the unwrapped model, captured before wrappers rename it.

    Activation checkpointing inserts a wrapper module (renaming parameters) and FSDP2 replaces
    parameters with DTensors, but every original module object survives: names are kept per
    module, and `apply` walks the wrapped model's modules, skipping wrappers.
    """

    def __init__(self, model: nn.Module):
        if not hasattr(model, "init_seed"):
            raise ValueError(f"{type(model).__name__} has no init_seed: build it with "
                             "pretrain.models.build_model, which records the seed of its values")
        self.cfg, self.seed = model.cfg, model.init_seed
        self.module_names = {module: name for name, module in model.named_modules()}
        self.kinds = model.param_kinds()
        self.zero_names = set(getattr(model, "zero_init_param_names", lambda: ())())
        mup = self.cfg.mup
        self.query_rows = query_slices(model) if mup.enabled and mup.zero_query else {}

    @torch.no_grad()
    def apply(self, model: nn.Module, device: torch.device | str = "cpu",
              partition: Callable[[list[nn.Parameter]], None] | None = None) -> None:
        """Allocate (if on meta) on `device` and write every initial value.

        With `partition` (ZeRO-3), a meta-built model is allocated one module at a time: the
        module's parameters are created from their full values, its buffers written, and then
        `partition` receives its parameters (and keeps only this rank's part), so at most one
        module's full parameters exist at once. Without it the whole model is allocated first.
        """
        per_module = partition is not None
        if on_meta(model) and not per_module:
            model.to_empty(device=device)
        # tied parameters are drawn once; a replaced meta one maps (kept alive) to its successor
        seen: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}
        for module in model.modules():
            prefix = self.module_names.get(module)
            if prefix is None:
                continue  # a wrapper added after the plan was taken
            weights = {}
            for attr, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    if seen[id(param)][1] is not param:
                        setattr(module, attr, seen[id(param)][1])
                    continue
                name = f"{prefix}.{attr}" if prefix else attr
                value = initial_value(name, param.shape, self.kinds[name], self.cfg, self.seed,
                                      zero=name in self.zero_names,
                                      query_rows=self.query_rows.get(name))
                original = param
                if per_module and param.is_meta:
                    param = adopt_value(module, attr, param, value, device)
                else:
                    fill(param, value)
                seen[id(original)] = seen[id(param)] = (original, param)
                weights[attr] = value
            if per_module:
                allocate_buffers(module, device)
            self._init_buffers(module, prefix, weights)
            if per_module:
                partition(list(module.parameters(recurse=False)))
            del weights
            return_freed_memory()  # the draw buffers, or glibc keeps them resident (any backend)

    def _init_buffers(self, module: nn.Module, prefix: str, weights: dict) -> None:
        if hasattr(module, "init_buffers"):
            module.init_buffers()
            return
        for attr, buffer in module.named_buffers(recurse=False):
            name = f"{prefix}.{attr}" if prefix else attr
            if isinstance(module, SigmaReparamLinear) and attr == "u":
                u = sigma_start_vector(weights["weight"], self.seed, name)
                fill(buffer, u)
                if self.cfg.sigma_reparam_gamma_init == "sigma":
                    fill(module.gamma, sigma_estimate(weights["weight"], u).reshape(1))
            else:
                raise ValueError(f"buffer {name} has no init rule: give {type(module).__name__} "
                                 "an init_buffers() method that recomputes it")
