"""Writing datasets as WebDataset tar shards or MDS shards, each with a manifest.json.

A sample is a dict of logical fields: images {"image": PIL image or uint8 array, "label": int},
token sequences {"tokens": int array of seq_len + 1, "doc_starts": int array}. WebDataset shards
are written with tarfile (deterministic headers); MDS shards with mosaicml-streaming's MDSWriter
(sha256 hashes on). The manifest records samples, bytes and sha256 of every shard.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.manifest import (
    MANIFEST_NAME,
    MDS_INDEX_NAME,
    Manifest,
    ShardInfo,
    manifest_from_mds_index,
)
from data_pipeline.storage import sha256_file


@dataclass(frozen=True)
class EncodedFile:
    """An image file stored as its own bytes (a JPEG kept without re-encoding). MDS writes it
    through streaming's `jpeg` encoding, which copies the bytes of a file-backed JPEG."""

    path: str
    ext: str  # WebDataset extension / MDS encoding: jpg

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


def _png(image: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


class WdsWriter:
    """Tar shards `shard-NNNNNN.tar` of at most `samples_per_shard` samples / `max_bytes` bytes."""

    def __init__(self, out_dir: str, samples_per_shard: int = 1000, max_bytes: int = 256 * 2**20,
                 meta: dict | None = None, first_key: int = 0):
        self.out_dir, self.samples_per_shard, self.max_bytes = out_dir, samples_per_shard, max_bytes
        self.meta = dict(meta or {})
        os.makedirs(out_dir, exist_ok=True)
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._total = first_key  # sample keys number the samples of the whole split

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, sample: dict[str, Any]) -> None:
        fields: dict[str, bytes] = {}
        for name, value in sample.items():
            if name == "image" and isinstance(value, EncodedFile):
                fields[value.ext] = value.read()
            elif name == "image":
                fields["png"] = _png(value)
            elif name == "label":
                fields["cls"] = str(int(value)).encode()
            elif isinstance(value, np.ndarray):
                fields[f"{name}.npy"] = _npy(value)
            elif isinstance(value, bytes):
                fields[name] = value
            else:
                fields[f"{name}.json"] = json.dumps(value).encode()
        size = sum(len(v) for v in fields.values())
        if self._tar is not None and (self._count >= self.samples_per_shard
                                      or self._tar.fileobj.tell() + size > self.max_bytes):
            self._close_shard()
        if self._tar is None:
            name = f"shard-{len(self.shards):06d}.tar"
            self._tar = tarfile.open(os.path.join(self.out_dir, name), "w", format=tarfile.USTAR_FORMAT)
            self.shards.append(ShardInfo(name=name, samples=0))
        key = f"{self._total:09d}"
        for ext, data in fields.items():
            self._add(f"{key}.{ext}", data)
        self._count += 1
        self._total += 1

    def _close_shard(self) -> None:
        self._tar.close()
        info = self.shards[-1]
        path = os.path.join(self.out_dir, info.name)
        info.samples, info.bytes, info.sha256 = self._count, os.path.getsize(path), sha256_file(path)
        self._tar, self._count = None, 0

    def finish(self) -> Manifest:
        if self._tar is not None:
            self._close_shard()
        manifest = Manifest(format="wds", shards=self.shards, meta=self.meta)
        _write_json(os.path.join(self.out_dir, MANIFEST_NAME), manifest.to_json())
        return manifest


class MdsWriter:
    """MDS shards through streaming's MDSWriter; columns follow the logical fields."""

    def __init__(self, out_dir: str, samples_per_shard: int = 1000, max_bytes: int = 256 * 2**20,
                 meta: dict | None = None, compression: str | None = None):
        self.out_dir, self.meta = out_dir, dict(meta or {})
        self.max_bytes, self.compression = max_bytes, compression
        self.samples_per_shard = samples_per_shard
        self._writer = None
        self._columns: dict[str, str] = {}

    def _columns_for(self, sample: dict[str, Any]) -> dict[str, str]:
        columns = {}
        for name, value in sample.items():
            if name == "image" and isinstance(value, EncodedFile):
                columns[name] = "jpeg"
            elif name == "image":
                columns[name] = "png"
            elif name == "label":
                columns[name] = "int"
            elif isinstance(value, np.ndarray):
                columns[name] = f"ndarray:{value.dtype.name}"
            elif isinstance(value, bytes):
                columns[name] = "bytes"
            else:
                columns[name] = "json"
        return columns

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            from data_pipeline._compat import import_streaming

            streaming = import_streaming()
            self._columns = self._columns_for(sample)
            # MDSWriter cuts shards by bytes only; a per-sample size bound gives ~samples_per_shard.
            self._writer = streaming.MDSWriter(
                out=self.out_dir, columns=self._columns, compression=self.compression,
                hashes=["sha256"], size_limit=self._size_limit(sample), exist_ok=True)
        row = {}
        for name, value in sample.items():
            if name == "image" and isinstance(value, np.ndarray):
                value = Image.fromarray(value)
            elif name == "image" and isinstance(value, EncodedFile):
                value = Image.open(value.path)  # file-backed: streaming copies its bytes
            elif name == "image" and self._columns.get(name) == "jpeg":
                value = self._as_jpeg_file(value)
            row[name] = value
        self._writer.write(row)

    def _as_jpeg_file(self, image: Any) -> Image.Image:
        """An image that could not be kept as its file (another mode, or not a JPEG) in a jpeg
        column: encoded once at quality 95 into a scratch file streaming copies the bytes of."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        scratch = os.path.join(self.out_dir, ".scratch.jpg")
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            scratch, format="JPEG", quality=95)
        return Image.open(scratch)

    def _size_limit(self, sample: dict[str, Any]) -> int:
        approx = sum(_approx_bytes(k, v) for k, v in sample.items()) + 8
        return int(min(self.max_bytes, max(1024, approx * self.samples_per_shard)))

    def finish(self) -> Manifest:
        if self._writer is None:
            raise ValueError("no samples were written")
        self._writer.finish()
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.out_dir, ".scratch.jpg"))
        with open(os.path.join(self.out_dir, MDS_INDEX_NAME)) as f:
            manifest = manifest_from_mds_index(json.load(f))
        manifest.meta = self.meta
        _write_json(os.path.join(self.out_dir, MANIFEST_NAME), manifest.to_json())
        return manifest


def _approx_bytes(name: str, value: Any) -> int:
    if isinstance(value, EncodedFile):
        return os.path.getsize(value.path)
    if name == "image":
        return len(_png(value))
    return value.nbytes if isinstance(value, np.ndarray) else 16


def _write_json(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_dataset(samples: Iterable[dict[str, Any]], out_dir: str, fmt: str,
                  samples_per_shard: int = 1000, meta: dict | None = None,
                  max_bytes: int = 256 * 2**20) -> Manifest:
    """Write samples (logical fields) into `out_dir` as `fmt` (wds | mds) shards."""
    if fmt == "wds":
        writer: WdsWriter | MdsWriter = WdsWriter(out_dir, samples_per_shard, max_bytes, meta)
    elif fmt == "mds":
        writer = MdsWriter(out_dir, samples_per_shard, max_bytes, meta)
    else:
        raise ValueError(f"format {fmt!r}: choose wds or mds")
    for sample in samples:
        writer.write(sample)
    return writer.finish()


def write_splits(samples: Iterable[tuple[str, dict[str, Any]]], out_dir: str, fmt: str,
                 samples_per_shard: int = 1000, meta: dict | None = None,
                 max_bytes: int = 256 * 2**20) -> dict[str, Manifest]:
    """Write (split, sample) pairs into out_dir/<split>/ datasets; returns their manifests."""
    writers: dict[str, WdsWriter | MdsWriter] = {}
    for split, sample in samples:
        if split not in writers:
            path = os.path.join(out_dir, split)
            if fmt == "wds":
                writers[split] = WdsWriter(path, samples_per_shard, max_bytes, meta)
            elif fmt == "mds":
                writers[split] = MdsWriter(path, samples_per_shard, max_bytes, meta)
            else:
                raise ValueError(f"format {fmt!r}: choose wds or mds")
        writers[split].write(sample)
    return {split: writer.finish() for split, writer in writers.items()}
