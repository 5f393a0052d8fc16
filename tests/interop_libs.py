"""Importing transformers / diffusers in tests on a machine whose torchvision cannot load.

pip resolves a CUDA-only torchvision next to the CPU torch here; transformers imports it
whenever its metadata says it is installed, and then fails (`operator torchvision::nms does not
exist`). Blocking the module (sys.modules entry None, Python's own way of saying "not
installed") makes transformers run without it, as it does on machines without torchvision.
The real torchvision is used whenever it imports.
"""

from __future__ import annotations

import sys

import pytest


def _block_broken_torchvision() -> None:
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
