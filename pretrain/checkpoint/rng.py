"""Every rank's RNG states (torch, CUDA, numpy, Python), saved without pickle.

    rng/rank_00000.safetensors   torch CPU/CUDA states and numpy's key array
    rng/rank_00000.json          numpy's position and Python's state
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

from pretrain.checkpoint.integrity import write_bytes


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rank_{rank:05d}.safetensors"


def save_rng(path: Path, rank: int) -> dict[str, str]:
    """Write this rank's RNG states; returns the files' checksums by absolute path."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    tensors_file = rng_file(path, rank)
    digests = {os.path.abspath(tensors_file): write_bytes(tensors_file, save(tensors))}
    py_version, py_internal, py_gauss = random.getstate()
    meta = {"python": [py_version, list(py_internal), py_gauss],
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    meta_file = path / f"rank_{rank:05d}.json"
    digests[os.path.abspath(meta_file)] = write_bytes(meta_file, json.dumps(meta).encode())
    return digests


def load_rng(path: Path, rank: int) -> None:
    tensors = load_file(str(rng_file(path, rank)))
    meta = json.loads((path / f"rank_{rank:05d}.json").read_text())
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_rank(seed: int, rank: int, step: int) -> None:
    """Fresh per-rank RNG streams, derived from (seed, rank, step)."""
    s = (seed * 1_000_003 + rank * 7919 + step) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
