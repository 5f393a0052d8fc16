"""Every private torch / DeepSpeed API this project relies on, in one place.

Private names move between releases without notice. Keeping each use behind one small function
here means an upgrade breaks in one file, and `tests/test_compat.py` exercises every function
against the pinned versions (torch 2.13, DeepSpeed 0.19), so the break shows as a named test
failure rather than deep inside a training run. Imports are lazy: model code imports this module
and must not pay for torch.distributed.checkpoint or DeepSpeed.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------- autograd


def in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. an activation-checkpoint recompute).

    No public API tells a forward called from backward apart from a plain one.
    """
    return torch._C._current_graph_task_id() != -1


def checkpoint_wrapper(module: nn.Module) -> nn.Module:
    """`module` recomputing its activations in backward; parameter names gain a fixed prefix
    that `get_state_dict` removes (the wrapper torchtitan also uses)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper as wrap,
    )

    return wrap(module)


# ---------------------------------------------------------------- optimizers


def skip_update_where(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """The next `optimizer.step()` leaves parameters and state untouched where `skip` (a float
    0-dim tensor on the parameters' device) is 1, decided on the device: no host sync.

    This is the undocumented attribute protocol GradScaler uses with the fused Adam/AdamW
    kernels (`found_inf`, `grad_scale`); only optimizers built with fused=True honour it.
    """
    if not optimizer.defaults.get("fused"):
        raise ValueError("skipping an update on device needs a fused optimizer")
    optimizer.grad_scale = None
    optimizer.found_inf = skip


def foreach_lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor],
                  weight: float) -> None:
    """targets[i] += weight * (sources[i] - targets[i]) in place, one fused kernel per device
    and dtype (the weight EMA's update). torch exposes it only as a private foreach op."""
    torch._foreach_lerp_(targets, sources, weight)


# ---------------------------------------------------------------- DTensor


def strided_shard(dim: int, parts: int) -> Any:
    """A placement that splits each of `parts` equal stacked blocks of `dim` over the mesh
    dimension (a rank holds [part_0_r, ..., part_k_r]): how a fused qkv or SwiGLU projection
    is split for tensor parallelism without changing its global layout. Only FSDP2's private
    `_StridedShard` expresses it."""
    from torch.distributed.tensor.placement_types import _StridedShard

    return _StridedShard(dim, split_factor=parts)


def release_dtensor_caches() -> None:
    """Empty DTensor's process-wide caches. Their keys hold DTensorSpecs, and through them the
    DeviceMesh and its process groups, which then outlive `destroy_process_group` (a gloo
    group's threads end only when its last reference goes): sharding propagation (the Python
    cache and the C++ fast path's), tensor-meta propagation, redistribute planners and
    transforms, and the mesh-topology cache of collective cost estimates."""
    if "torch.distributed.tensor" not in sys.modules:  # never imported: nothing cached
        return
    from torch.distributed.tensor import DTensor, _redistribute
    from torch.distributed.tensor._collective_utils import MeshTopoInfo
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
    DTensor._op_dispatcher.sharding_propagator._propagate_tensor_meta_cached.cache_clear()
    _redistribute.clear_redistribute_planner_cache()
    _redistribute._gen_transform_infos.cache_clear()
    MeshTopoInfo.build_from_mesh.cache_clear()


# ---------------------------------------------------------------- torch.distributed.checkpoint


def dcp_writer_transforms_base() -> type:
    """DCP's per-record stream-transform class, which a writer subclasses to skip its costs."""
    from torch.distributed.checkpoint.filesystem import _StorageWriterTransforms

    return _StorageWriterTransforms


def dcp_set_element(root: dict, path: Any, value: Any) -> None:
    """Set `value` at a flattened-state-dict `path` inside the nested `root` (DCP's own helper)."""
    from torch.distributed.checkpoint._nested_dict import set_element

    set_element(root, path, value)


def dcp_metadata_path(reader: Any, rank: int | None) -> Any:
    """Where a FileSystemReader finds the metadata file for `rank` (None: the shared one)."""
    return reader._get_metadata_path(rank)


# ---------------------------------------------------------------- DeepSpeed


def deepspeed_disable_op(deepspeed: Any, builder_name: str) -> None:
    """Mark a JIT-built DeepSpeed op unusable, so DeepSpeed falls back instead of compiling it
    (its comm backend reads this table before building the CPU shared-memory all-reduce)."""
    deepspeed.ops.__compatible_ops__[builder_name] = False


def deepspeed_cpu_shm_comm_builder() -> type:
    """The builder class of DeepSpeed's CPU shared-memory all-reduce op."""
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    return ShareMemCommBuilder


def deepspeed_torch_checkpoint_engine() -> type:
    """DeepSpeed's torch.save/torch.load checkpoint engine (subclassed to load safely)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    return TorchCheckpointEngine


def deepspeed_engine_config(ds_engine: Any) -> Any:
    """The parsed DeepSpeed config an initialised engine runs with."""
    return ds_engine._config


def deepspeed_base_optimizer(ds_optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer a ZeRO optimizer wraps (holds the per-parameter Adam state)."""
    return ds_optimizer.optimizer


def deepspeed_zero3_partitioner(deepspeed: Any, config: dict, dtype: torch.dtype
                                ) -> Callable[[list[nn.Parameter]], None]:
    """A function that turns full parameters into ZeRO-3 parameters, as `deepspeed.zero.Init`
    does for each module built in its context: cast to the engine's dtype (what
    `deepspeed.initialize` does to a model it partitions itself), broadcast from rank 0, keep this
    rank's partition and free the full tensor. `Init(module=...)` is the public form, but it
    converts a whole module tree at once; its per-list step is private."""
    zero_init = deepspeed.zero.Init(config_dict_or_path=config, dtype=dtype)

    def partition(params: list[nn.Parameter]) -> None:
        fresh = [p for p in params if not hasattr(p, "ds_id")]
        for p in fresh:
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        zero_init._convert_to_zero_parameters(fresh)

    return partition


def deepspeed_release_references() -> None:
    """Drop the references DeepSpeed keeps in globals after `engine.destroy()` and
    `deepspeed.comm.destroy_process_group()`, each of which keeps a process group alive (and
    with it its gloo threads) to interpreter exit:
    - ZeRO-3's stack of modules in forward (`FWD_MODULE_STACK`) holds the model;
    - the class-level lru_cache of `PartitionedParameterCoordinator.__params_to_release` is
      keyed by every coordinator and module it ever saw;
    - `TorchBackend.barrier` / `monitored_barrier` default to `GroupMember.WORLD` evaluated when
      `deepspeed.comm` was imported, which here is after init_process_group: the default is the
      world group itself. Their bodies read None as the world group, so None is the same default.
    """
    if "deepspeed.comm" not in sys.modules:
        return
    from deepspeed.comm.torch import TorchBackend
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import (
        PartitionedParameterCoordinator,
    )

    parameter_offload.FWD_MODULE_STACK.clear()
    coordinator = PartitionedParameterCoordinator
    nvtx_wrapped = coordinator._PartitionedParameterCoordinator__params_to_release
    inspect.getclosurevars(nvtx_wrapped).nonlocals["func"].cache_clear()  # under nvtx's wrapper
    from torch.distributed import ProcessGroup

    for method in (TorchBackend.barrier, TorchBackend.monitored_barrier):
        fn = inspect.unwrap(method)
        fn.__defaults__ = tuple(None if isinstance(d, ProcessGroup) else d
                                for d in fn.__defaults__ or ())
