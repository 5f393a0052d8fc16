"""Rank/world discovery and process-group setup, from torchrun's environment variables.

One process group with a backend per device type in use: `gloo` on a CPU run, and
`cpu:gloo,cuda:nccl` on a CUDA run. Why both on CUDA rather than an nccl-only group plus a
separate CPU group for control flags: a collective then works whatever device its tensor is on
(an nccl-only group raises "No backend type associated with device type cpu" on the first CPU
tensor, as every CPU call site did), and no call site has to pick a group. The hot path still
keeps its tensors on the compute device (loss, grad norm, the stop/save agreement), so those go
through NCCL; gloo serves only what is CPU by nature (a CPU-side object, a barrier's token).

Collectives called through this module name themselves: a timeout (gloo raises on the calling
thread) becomes `CollectiveTimeout("rank N timed out in <op> at step S")`. Under NCCL the
watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default) aborts a hung rank instead of
returning; the timeout for both is `run.collective_timeout_s`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pretrain import compat


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the process group's timeout."""


_progress: dict[str, int | None] = {"step": None}  # the loop's step, for error messages only


def note_step(step: int | None) -> None:
    """Record the training step the loop is at (named by a CollectiveTimeout); None outside
    a run's loop, so one run's step is never named by the next (in-process) run's setup."""
    _progress["step"] = step


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but CUDA is not available on this machine")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def group_backend(device_type: str, accelerator_backend: str = "nccl") -> str:
    """The process group's backend string: one backend per device type a run uses.

    `accelerator_backend` exists so a CPU test can build the CUDA run's group with gloo
    standing in for NCCL (`cpu:gloo,cuda:gloo`)."""
    if device_type == "cpu":
        return "gloo"
    return f"cpu:gloo,{device_type}:{accelerator_backend}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", need_group: bool = False,
                     timeout_s: float = 600.0) -> DistEnv:
    """Join the process group torchrun set up (or run alone when WORLD_SIZE is unset).

    The group has a backend per device type in use (`group_backend`). A lone process gets a
    one-rank group only if `need_group` (FSDP2 and DDP need one even on a single process).
    """
    if need_group and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device, local_rank)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}  # eager NCCL init, bound device
        dist.init_process_group(backend=group_backend(dev.type),
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


@contextlib.contextmanager
def named_collective(op: str) -> Iterator[None]:
    """Turn a timeout inside the block into "rank N timed out in <op> at step S"."""
    try:
        yield
    except RuntimeError as e:  # DistBackendError and gloo's timeouts are RuntimeErrors
        if not _is_timeout(e):
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        step = _progress["step"]
        where = f" at step {step}" if step is not None else ""
        raise CollectiveTimeout(f"rank {rank} timed out in {op}{where}: {e}") from e


def all_reduce_sum(values: torch.Tensor, op: str = "all_reduce_sum") -> torch.Tensor:
    """Sum over ranks, in place (identity when not distributed)."""
    if dist.is_initialized():
        with named_collective(op):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor, op: str = "all_reduce_max") -> torch.Tensor:
    if dist.is_initialized():
        with named_collective(op):
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def barrier(op: str = "barrier") -> None:
    if dist.is_initialized():
        with named_collective(op):
            dist.barrier()


def shutdown() -> None:
    """Destroy every process group and let each one's threads end before this returns.

    `destroy_process_group` only unregisters the groups: a gloo group joins its worker threads
    when its last reference goes, and caches in DTensor and DeepSpeed keep references (meshes,
    the world group, the model) until interpreter exit. A gloo thread that then drops a
    tensor's last reference needs the GIL after Python began finalising; Python ends the thread
    inside a noexcept frame and the process aborts ("terminate called without an active
    exception", SIGABRT at exit). So the references go here, while the interpreter is whole, and
    the cycles that hold groups are collected. An engine's own references go first, in
    `Engine.close` (DeepSpeed's need its comm layer alive)."""
    if not dist.is_initialized():
        return
    ds_comm = sys.modules.get("deepspeed.comm")
    if ds_comm is not None and ds_comm.is_initialized():
        ds_comm.destroy_process_group()  # torch's, then DeepSpeed's own group references
    else:
        dist.destroy_process_group()
    compat.deepspeed_release_references()
    compat.release_dtensor_caches()
    gc.collect()
