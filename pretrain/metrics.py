"""Metrics sinks on rank 0: JSONL in the run directory, TensorBoard, and a tqdm progress bar.

Throughput and MFU are derived here from the model's own FLOPs accounting:
MFU = flops_per_sample * samples/s / (peak FLOP/s per device * devices).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def device_peak_flops(device: torch.device, configured_tflops: float) -> float | None:
    """Configured peak, else a known GPU's datasheet peak, else None (no MFU)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
    return None


class MetricsLogger:
    """Writes every record to metrics.jsonl and TensorBoard; no-ops on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, progress_bar: bool, total_steps: int, start_step: int):
        self.enabled = enabled
        self.jsonl = self.tb = self.bar = None
        if not enabled:
            return
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **values}
        self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step",):
                    self.tb.add_scalar(f"{split}/{key}", value, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A uint8 [3, H, W] image to TensorBoard."""
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, step)

    def text(self, tag: str, text: str) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_text(tag, text)

    def progress(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
