"""The model folder transformers and diffusers read: config.json, safetensors shards and their
index, written aside and renamed when complete; and its reader, which trusts nothing it reads.

Layout (as `save_pretrained` writes it): `<weights>-0000i-of-0000n.safetensors` with at most
`max_shard_bytes` of tensors each (a larger tensor gets a shard of its own) and
`<weights>.safetensors.index.json` mapping every tensor to its shard. The index is written even
for one shard, so a reader always has the full name list before opening a file. Every file's
bytes are a pure function of the weights and the config (no dates, no paths), so
export -> import -> export is bit-identical.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from pretrain.checkpoint.convert.sinks import write_safetensors
from pretrain.checkpoint.convert.sources import (
    _ST_DTYPES,
    CheckpointFormatError,
    _safetensors_header,
)
from pretrain.interop.plan import PlanSource

DEFAULT_SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def shard_names(source: PlanSource, max_shard_bytes: int) -> list[list[str]]:
    """Tensors grouped into shards in order, each group at most `max_shard_bytes` (or one
    tensor larger than that)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, info in source.params.items():
        if shards[-1] and size + info.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += info.nbytes
    return shards


def write_weights(source: PlanSource, out: Path, prefix: str, max_shard_bytes: int | None,
                  progress: Callable[[str], None] = lambda _: None) -> None:
    """Shards and index of `source` (one tensor in memory at a time) into directory `out`;
    `max_shard_bytes=None`: one `<prefix>.safetensors` and no index (timm's layout)."""
    if max_shard_bytes is None:
        write_safetensors(source, out / f"{prefix}.safetensors", metadata={"format": "pt"},
                          progress=progress)
        return
    groups = shard_names(source, max_shard_bytes)
    n = len(groups)
    weight_map = {}
    for i, names in enumerate(groups, start=1):
        fname = f"{prefix}-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(source.subset(names), out / fname, metadata={"format": "pt"},
                          progress=progress)
        weight_map |= {name: fname for name in names}
    total = sum(info.nbytes for info in source.params.values())
    write_json(out / f"{prefix}.safetensors.index.json",
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """Run `fill(partial_dir)` and rename the directory to `out` when it returns: an
    interrupted export leaves `<out>.partial`, never a folder that looks complete."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new destination")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fill(partial)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


class FolderReader:
    """Tensors of a model folder by name, opened lazily; shapes and dtypes from the headers."""

    def __init__(self, folder: Path, prefix: str):
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / f"{prefix}.safetensors.index.json"
        single = self.folder / f"{prefix}.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointFormatError(f"{index}: not a safetensors index ({e})") from None
        elif single.exists():
            weight_map = None
        else:
            raise CheckpointFormatError(f"{self.folder}: no {index.name} or {single.name}")
        files = sorted(set(weight_map.values())) if weight_map else [single.name]
        self._files = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for fname in files:
            path = self.folder / fname
            if Path(fname).name != fname or not path.is_file():
                raise CheckpointFormatError(
                    f"{index}: shard {fname!r} is not a file in {self.folder}")
            handle = safe_open(str(path), framework="pt")
            header = _safetensors_header(path)
            for name in handle.keys():
                if weight_map is not None and weight_map.get(name) != fname:
                    raise CheckpointFormatError(f"{path}: holds {name}, which the index does not "
                                                f"place in this shard")
                self._files[name] = handle
                self.shapes[name] = tuple(handle.get_slice(name).get_shape())
                dtype = header[name]["dtype"]
                if dtype not in _ST_DTYPES:
                    raise CheckpointFormatError(f"{path}: {name} has unsupported dtype {dtype}")
                self.dtypes[name] = _ST_DTYPES[dtype]
        if weight_map is not None:
            lost = sorted(set(weight_map) - set(self._files))
            if lost:
                raise CheckpointFormatError(f"{index} lists {lost[0]} in {weight_map[lost[0]]}, "
                                            f"which does not hold it ({len(lost)} such tensors)")

    def read(self, name: str) -> torch.Tensor:
        if name not in self._files:
            raise CheckpointFormatError(f"{self.folder} has no tensor {name}")
        return self._files[name].get_tensor(name)


def read_config(folder: Path, name: str = "config.json") -> dict:
    path = Path(folder) / name
    if not path.is_file():
        raise CheckpointFormatError(f"{folder} has no {name}: not a transformers/diffusers folder")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointFormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path}: not a JSON object")
    return config
