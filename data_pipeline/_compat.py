"""Importing mosaicml-streaming and diffusers / transformers where torchvision cannot load.

On CPU-only machines the only torchvision wheel pip finds is a CUDA build that fails at import.
- `import streaming` imports `streaming.vision`, which imports torchvision. Streaming's vision
  datasets are not used here, so a minimal stand-in (`VisionDataset`, `to_tensor`) is registered
  in its place.
- timm imports torchvision at module level (FrozenBatchNorm2d, a few transforms and datasets,
  InterpolationMode) though its models never use it; the same stand-in carries those names
  (`import_timm`), so timm's real model code imports and runs. Anything only torchvision can
  do raises, naming the missing piece.
- transformers / diffusers import torchvision whenever its metadata says it is installed, and the
  stand-in is not enough for them; blocking the module (sys.modules entry None, Python's own way
  of saying "not installed") makes them run as they do on machines without torchvision.
The real torchvision is always preferred when it imports.
"""

from __future__ import annotations

import enum
import importlib.machinery
import sys
import types
from typing import Any


def _module(name: str, is_package: bool = False) -> types.ModuleType:
    mod = types.ModuleType(name)
    # transformers (pulled in by streaming) inspects __spec__ of every imported module.
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=is_package)
    if is_package:
        mod.__path__ = []
    mod.__dict__["__torchvision_standin__"] = True
    return mod


class InterpolationMode(enum.Enum):
    """torchvision.transforms.InterpolationMode's members (timm maps them to names at import)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _unavailable(qualname: str) -> type:
    """A class that can be named and subclassed but raises when built: what only the real
    torchvision provides."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise ImportError(f"{qualname} needs the real torchvision, which cannot load here")

    return type(qualname.rsplit(".", 1)[1], (), {"__init__": __init__})


def _install_torchvision_standin() -> None:
    import numpy as np
    import torch

    class VisionDataset(torch.utils.data.Dataset):
        """Stand-in base class; only subclassed by streaming.vision, never used here."""

        def __init__(self, root: Any = None, transforms: Any = None, transform: Any = None,
                     target_transform: Any = None) -> None:
            self.root, self.transform, self.target_transform = root, transform, target_transform
            self.transforms = transforms

    def to_tensor(pic: Any) -> torch.Tensor:
        """PIL image or HWC uint8 array -> CHW float tensor in [0, 1]."""
        arr = np.asarray(pic)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor.float()

    class ToTensor:
        def __call__(self, pic: Any) -> torch.Tensor:
            return to_tensor(pic)

    root = _module("torchvision", is_package=True)
    datasets = _module("torchvision.datasets", is_package=True)
    transforms = _module("torchvision.transforms", is_package=True)
    functional = _module("torchvision.transforms.functional")
    ops = _module("torchvision.ops", is_package=True)
    misc = _module("torchvision.ops.misc")
    datasets.VisionDataset = VisionDataset
    for name in ("CIFAR10", "CIFAR100", "FashionMNIST", "ImageFolder", "KMNIST", "MNIST"):
        setattr(datasets, name, _unavailable(f"torchvision.datasets.{name}"))
    misc.FrozenBatchNorm2d = _unavailable("torchvision.ops.misc.FrozenBatchNorm2d")
    functional.to_tensor, functional.InterpolationMode = to_tensor, InterpolationMode
    transforms.functional, transforms.ToTensor = functional, ToTensor
    transforms.InterpolationMode = InterpolationMode
    ops.misc = misc
    root.datasets, root.transforms, root.ops = datasets, transforms, ops
    root.__version__ = "0.0.0+standin"
    for mod in (root, datasets, transforms, functional, ops, misc):
        sys.modules[mod.__name__] = mod


def ensure_torchvision_importable() -> bool:
    """Make `import torchvision` succeed; returns True if the stand-in had to be installed."""
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return bool(getattr(existing, "__torchvision_standin__", False))
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # a CUDA-only wheel raises RuntimeError, a missing one ImportError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _install_torchvision_standin()
        return True


def import_streaming() -> types.ModuleType:
    """`import streaming`, with the torchvision stand-in installed first if needed."""
    ensure_torchvision_importable()
    import streaming

    return streaming


def import_timm() -> types.ModuleType:
    """`import timm` with the torchvision stand-in installed first if needed (also after a
    block: transformers keeps the answer it read then); a missing timm raises ImportError."""
    ensure_torchvision_importable()
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"timm is not installed ({e}): pip install timm") from e
    return timm


def block_broken_torchvision() -> None:
    """Make transformers / diffusers import as on a machine without torchvision, unless the real
    torchvision loads (a stand-in installed for streaming is replaced by the block; streaming
    keeps the references it took)."""
    existing = sys.modules.get("torchvision", False)
    if existing is None:
        return
    if existing is not False and not getattr(existing, "__torchvision_standin__", False):
        return  # the real one is loaded
    if existing is False:
        try:
            import torchvision  # noqa: F401
            return
        except Exception:  # noqa: BLE001 - a CUDA-only wheel raises RuntimeError
            pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.modules["torchvision"] = None
    utils = sys.modules.get("transformers.utils.import_utils")
    if utils is not None:  # transformers was imported (by streaming) while a stand-in was there
        utils._torchvision_available = False


def import_diffusers() -> types.ModuleType:
    """`import diffusers` with torchvision blocked if it cannot load; a missing diffusers raises
    ImportError naming the extra that installs it."""
    block_broken_torchvision()
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"diffusers is not installed ({e}): pip install 'pretrain[vae]'") from e
    return diffusers
