"""Metrics sinks on rank 0: JSONL in the run directory, TensorBoard, and progress output
(a tqdm bar on a terminal, lines into a file: pretrain/progress.py).

Throughput and MFU come from the batches actually trained (their shape, not the model's
configured length) and the model's own FLOPs accounting:
MFU = training FLOPs/s / (peak FLOP/s of the dtype in use per device * devices).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from pretrain.metrics_config import WandbConfig
from pretrain.progress import make_progress, show_each_warning_once


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Read from /proc/self/status (VmHWM, the high-water
    mark of this process's own address space) because `getrusage().ru_maxrss` of a child started
    by fork/vfork + exec starts at the parent's RSS: a conversion launched from a 800 MB test
    runner reports 800 MB whatever it uses. ru_maxrss where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# Dense peak FLOP/s per device by matmul dtype (vendor datasheets, without sparsity):
# (pattern on torch.cuda.get_device_name, {bf16, tf32, fp32}). First match wins, so the more
# specific names come first ("H100 PCIe" before "H100", "A100" before "A10").
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    (r"H100.*NVL", {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    (r"H100|H200|GH200", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),  # SXM
    (r"A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),  # SXM and PCIe alike
    (r"L40S", {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    (r"A10\b|A10G", {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
]


def matmul_dtype(mixed_precision: str) -> str:
    """The dtype the matmuls run in: bf16 under mixed precision, else fp32 as TF32 when torch
    is allowed to use it."""
    if mixed_precision == "bf16":
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_for(device_name: str, dtype: str) -> float | None:
    """Datasheet peak of a device (by its CUDA name) for `dtype`; None for an unknown device."""
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, device_name):
            return peaks[dtype]
    return None


def device_peak_flops(device: torch.device, configured_tflops: float,
                      dtype: str = "bf16") -> float | None:
    """Configured peak (logging.peak_tflops), else the device's datasheet peak for `dtype`,
    else None (no MFU)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        return peak_for(torch.cuda.get_device_name(device), dtype)
    return None


def sync_debug(on: bool) -> None:
    """CUDA: warn on every host sync while `on` (torch.cuda.set_sync_debug_mode); else no-op."""
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("warn" if on else "default")


class MetricsLogger:
    """Writes every record to metrics.jsonl and TensorBoard; no-ops on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, progress_bar: bool,
                 total_steps: int, start_step: int, every_steps: int = 1,
                 wandb: WandbConfig | None = None, run_config: dict | None = None):
        self.enabled = enabled
        self.jsonl = self.tb = self.bar = self.wandb = None
        show_each_warning_once()  # every rank: a warning repeated every step is shown once
        if not enabled:
            return
        if wandb is not None and wandb.project:
            from pretrain.metrics_wandb import WandbSink

            self.wandb = WandbSink(wandb, run_dir, run_config or {}, run_dir.name)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        if progress_bar:  # tqdm on a terminal, a line every logging.every_steps into a file
            self.bar = make_progress(total_steps, start_step, every_steps)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **values}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self.tb.add_scalar(f"{split}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(step, split, values)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A uint8 [3, H, W] image to TensorBoard."""
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, step)
        if self.enabled and self.wandb is not None:
            self.wandb.image(tag, image, step)

    def text(self, tag: str, text: str) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text)

    def progress(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step, loss, lr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
