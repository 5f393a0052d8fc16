"""Loading torch.save files (DeepSpeed's checkpoint format) without running code from them.

`torch.load(weights_only=True)` builds only tensors and containers of plain values. DeepSpeed's
ZeRO files also hold three of its own plain-data classes (a loss-scaler record, a fragment
address dataclass and the ZeRO stage enum); those, and nothing else, are allow-listed. Any
other class in a file is refused with an error naming it, before anything is constructed.
"""

from __future__ import annotations

import importlib
import pickle
import re
from pathlib import Path

import torch

from pretrain.checkpoint.dcp_io import UnsafeCheckpointError


class UnreadableTorchFileError(pickle.UnpicklingError):
    """A corrupt or truncated file where a torch.save file was expected (torch says
    RuntimeError, which would read as a bug)."""


# DeepSpeed classes found in ZeRO checkpoints; each rebuilds from plain fields only.
DEEPSPEED_DATA_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
)


def _allowed_globals() -> list:
    found = []
    for module, name in DEEPSPEED_DATA_CLASSES:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:  # without DeepSpeed installed such files are refused
            continue
    return found


def safe_torch_load(path: str | Path, map_location="cpu", mmap: bool = False):
    """torch.load with weights_only=True (+ DeepSpeed's data classes); anything else is refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", str(e))
        detail = f"it refers to {found.group(1)}" if found else str(e).strip().splitlines()[-1]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it needs unpickling beyond weights_only ({detail}). "
            "Loading it fully could run arbitrary code; only tensors, plain containers and "
            "DeepSpeed's checkpoint data classes are accepted."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:  # truncated, not a torch.save file
        raise UnreadableTorchFileError(
            f"{path} is not a readable torch.save file ({' '.join(str(e).split())[:300]})"
        ) from e
