"""`auto` settings: the fast path a GPU user expects, resolved once at startup from the device.

On CUDA: bf16 mixed precision (where the GPU has bf16), TF32 for fp32 matmuls, fused AdamW,
torch.compile per block, loader workers with pinned memory. On a CPU every `auto` resolves to
what the project did before these settings existed (fp32, eager, no workers), so CPU runs and
tests are unchanged. The trainer writes the resolved values into the run's config.yaml, so a
user reads what actually ran; an explicit value in a recipe always wins.

`resolve_auto` is a pure function of the config and a `DeviceInfo`; only `describe_device`
asks torch about the hardware (so the rules are tested on a CPU with a described GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass

import torch

from launch.slurm_config import LOADER_WORKERS_PER_GPU
from pretrain.optim_config import OptimConfig
from pretrain.parallel_config import ParallelConfig


@dataclass(frozen=True)
class DeviceInfo:
    """What the `auto` rules need to know about where a rank runs."""

    type: str  # torch device type: cuda | cpu | ...
    bf16: bool = False  # the device computes in bf16 at full speed
    cpus: int = 1  # CPU cores this process may use
    procs_per_node: int = 1  # ranks sharing those cores


def describe_device(device: torch.device, procs_per_node: int | None = None) -> DeviceInfo:
    if procs_per_node is None:
        procs_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return DeviceInfo(type=device.type, bf16=bf16, cpus=len(os.sched_getaffinity(0)),
                      procs_per_node=procs_per_node)


def loader_workers(dev: DeviceInfo) -> int:
    """DataLoader workers per rank: none on a CPU (the ranks need the cores); on a GPU up to
    LOADER_WORKERS_PER_GPU, leaving each rank's main process a core."""
    if dev.type != "cuda":
        return 0
    return max(1, min(LOADER_WORKERS_PER_GPU, dev.cpus // max(dev.procs_per_node, 1) - 1))


def resolve_parallel(parallel: ParallelConfig, dev: DeviceInfo) -> ParallelConfig:
    gpu = dev.type == "cuda"
    out = copy.copy(parallel)
    if out.mixed_precision == "auto":
        out.mixed_precision = "bf16" if gpu and dev.bf16 else "none"
    if out.compile == "auto":
        out.compile = gpu
    if out.tf32 == "auto":
        out.tf32 = gpu
    return out


def resolve_optim(optim: OptimConfig, dev: DeviceInfo) -> OptimConfig:
    """Fused AdamW on a GPU, and wherever the divergence guard skips updates on device."""
    if optim.fused != "auto":
        return optim
    return dataclasses.replace(optim, fused=dev.type == "cuda" or optim.on_nonfinite == "skip")


def resolve_auto(cfg, dev: DeviceInfo):
    """A copy of the TrainConfig `cfg` with every `auto` replaced by its value on `dev`."""
    out = copy.deepcopy(cfg)
    out.parallel = resolve_parallel(out.parallel, dev)
    out.optim = resolve_optim(out.optim, dev)
    if out.data.num_workers == "auto":
        out.data.num_workers = loader_workers(dev)
    if out.data.pin_memory == "auto":
        out.data.pin_memory = dev.type == "cuda"
    return out


def apply_device_flags(parallel: ParallelConfig) -> None:
    """Process-wide switches: TF32 tensor cores for fp32 matmuls and cuDNN convolutions."""
    if parallel.tf32 is True:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
