"""Importing transformers / diffusers in tests on a machine whose torchvision cannot load.

pip resolves a CUDA-only torchvision next to the CPU torch here; transformers imports it
whenever its metadata says it is installed, and then fails (`operator torchvision::nms does not
exist`). The block (`data_pipeline._compat.block_broken_torchvision`, shared with `data build
latents`) makes transformers run without it, as it does on machines without torchvision.
The real torchvision is used whenever it imports.
"""

from __future__ import annotations

import pytest

from data_pipeline._compat import block_broken_torchvision as _block_broken_torchvision


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
