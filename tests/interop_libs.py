"""Importing transformers / diffusers / timm in tests on a machine whose torchvision cannot load.

pip resolves a CUDA-only torchvision next to the CPU torch here; transformers imports it
whenever its metadata says it is installed, and then fails (`operator torchvision::nms does not
exist`). The block (`data_pipeline._compat.block_broken_torchvision`, shared with `data build
latents`) makes transformers run without it, as it does on machines without torchvision.
timm imports torchvision's names at module level, so it gets the stand-in instead
(`import_timm`). The real torchvision is used whenever it imports.
"""

from __future__ import annotations

import pytest

from data_pipeline._compat import block_broken_torchvision as _block_broken_torchvision
from data_pipeline._compat import import_timm as _import_timm


def transformers():
    """The transformers package with its model classes importable, or the test skips."""
    _block_broken_torchvision()
    lib = pytest.importorskip("transformers")
    try:
        lib.LlamaForCausalLM  # noqa: B018 - resolves the lazy module now
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"transformers' models do not import here: {e}")
    return lib


def diffusers():
    _block_broken_torchvision()
    lib = pytest.importorskip("diffusers")
    try:
        lib.DiTTransformer2DModel  # noqa: B018
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"diffusers' models do not import here: {e}")
    return lib


def timm():
    """timm, its torchvision imports served by the stand-in where torchvision cannot load (its
    models never use them), or the test skips naming why timm does not import."""
    try:
        lib = _import_timm()
        lib.models.VisionTransformer  # noqa: B018
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"timm does not import here, even with the torchvision stand-in: {e}")
    return lib
