"""Writing datasets as WebDataset tar shards or MDS shards, each with a manifest.json.

A sample is a dict of logical fields: images {"image": PIL image or uint8 array, "label": int},
token sequences {"tokens": int array of seq_len + 1, "doc_starts": int array}. WebDataset shards
are written with tarfile (deterministic headers); MDS shards with mosaicml-streaming's MDSWriter
(sha256 hashes on). The manifest records samples, bytes and sha256 of every shard.

Both writers close a shard when it holds `samples_per_shard` samples (or on `end_shard()`), and
a closed shard is final: `records()` describes the finished shards as JSON, and a new writer
given them (`resume`) continues after them, which is what a resumed build (`build_journal.py`)
needs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.manifest import (
    MANIFEST_NAME,
    MDS_INDEX_NAME,
    Manifest,
    ShardInfo,
    check_shards,
    manifest_from_mds_index,
)
from data_pipeline.storage import sha256_file, write_text_atomic


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
        self._first_key = self._total = first_key  # keys number the samples of the whole split
        self._reported = 0  # shards already handed out by end_shard

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
            self._tar = tarfile.open(os.path.join(self.out_dir, name), "w",
                                     format=tarfile.USTAR_FORMAT)
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
        info.samples, info.bytes, info.sha256 = (
            self._count,
            os.path.getsize(path),
            sha256_file(path),
        )
        self._tar, self._count = None, 0

    def end_shard(self) -> list[dict]:
        """Close the open shard now (the next sample starts another); the records of the shards
        closed since the last call (more than one only when max_bytes cut one)."""
        if self._tar is not None:
            self._close_shard()
        closed = [asdict(s) for s in self.shards[self._reported :]]
        self._reported = len(self.shards)
        return closed

    @staticmethod
    def shard_of(record: dict) -> ShardInfo:
        """The stored file a record describes (name, bytes, sha256), checked like a manifest's."""
        shard = ShardInfo(**record)
        check_shards([shard], "build journal")
        return shard

    def shard_names(self, first: int, count: int) -> list[str]:
        """Names this writer gives shards first, first + 1, ..."""
        return [f"shard-{i:06d}.tar" for i in range(first, first + count)]

    def resume(self, records: list[dict]) -> None:
        """Continue after these finished shards (records of an earlier writer, verified)."""
        self.shards = [self.shard_of(r) for r in records]
        self._total = self._first_key + sum(s.samples for s in self.shards)
        self._reported = len(self.shards)

    def finish(self) -> Manifest:
        if self._tar is not None:
            self._close_shard()
        manifest = Manifest(format="wds", shards=self.shards, meta=self.meta)
        write_text_atomic(os.path.join(self.out_dir, MANIFEST_NAME), manifest.to_json())
        return manifest


class MdsWriter:
    """MDS shards `shard.NNNNN.mds` of `samples_per_shard` samples (fewer when `max_bytes` cuts
    first), columns following the logical fields. Each shard is written by its own streaming
    MDSWriter in OUT/.writing and renamed into place, so a closed shard is final (streaming's
    writer cuts by bytes only and cannot continue a set); index.json lists them all."""

    def __init__(
        self,
        out_dir: str,
        samples_per_shard: int = 1000,
        max_bytes: int = 256 * 2**20,
        meta: dict | None = None,
        compression: str | None = None,
    ):
        self.out_dir, self.meta = out_dir, dict(meta or {})
        self.max_bytes, self.compression = max_bytes, compression
        self.samples_per_shard = samples_per_shard
        os.makedirs(out_dir, exist_ok=True)
        self.entries: list[dict] = []  # streaming's index entries of the finished shards
        self._scratch = os.path.join(out_dir, ".writing")
        self._writer = None
        self._count = 0
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
        if self._writer is not None and self._count >= self.samples_per_shard:
            self.end_shard()
        if self._writer is None:
            from data_pipeline._compat import import_streaming

            self._columns = self._columns or self._columns_for(sample)
            self._writer = import_streaming().MDSWriter(
                out=self._scratch,
                columns=self._columns,
                compression=self.compression,
                hashes=["sha256"],
                size_limit=self.max_bytes,
                exist_ok=True,
            )
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
        self._count += 1

    def _as_jpeg_file(self, image: Any) -> Image.Image:
        """An image that could not be kept as its file (another mode, or not a JPEG) in a jpeg
        column: encoded once at quality 95 into a scratch file streaming copies the bytes of."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        scratch = os.path.join(self.out_dir, ".scratch.jpg")
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            scratch, format="JPEG", quality=95
        )
        return Image.open(scratch)

    def end_shard(self) -> list[dict]:
        """Close the open shard now; the index entries of the file(s) it became (more than one
        only when max_bytes cut it), renamed to follow the finished ones."""
        if self._writer is None:
            return []
        self._writer.finish()
        with open(os.path.join(self._scratch, MDS_INDEX_NAME)) as f:
            written = json.load(f)["shards"]
        for entry in written:
            number = f"{len(self.entries):05d}"
            for part in ("raw_data", "zip_data"):
                info = entry.get(part)
                if not info:
                    continue
                prefix, _, rest = info["basename"].split(".", 2)
                name = f"{prefix}.{number}.{rest}"
                scratch_file = os.path.join(self._scratch, info["basename"])
                if os.path.exists(scratch_file):  # compressed: only the zip file is stored
                    os.replace(scratch_file, os.path.join(self.out_dir, name))
                info["basename"] = name
            self.entries.append(entry)
        shutil.rmtree(self._scratch)
        self._writer, self._count = None, 0
        return written

    @staticmethod
    def shard_of(record: dict) -> ShardInfo:
        """The stored file an index entry describes, checked like streaming's index."""
        return manifest_from_mds_index({"version": 2, "shards": [record]}).shards[0]

    def shard_names(self, first: int, count: int) -> list[str]:
        """Names of the stored files of shards first, first + 1, ... (compressed: the zip)."""
        ext = ""
        if self.compression:
            from data_pipeline._compat import import_streaming

            compression = import_streaming().base.compression
            ext = f".{compression.get_compression_extension(self.compression)}"
        return [f"shard.{i:05d}.mds{ext}" for i in range(first, first + count)]

    def resume(self, records: list[dict]) -> None:
        """Continue after these finished shards (index entries of an earlier writer, verified)."""
        for record in records:
            self.shard_of(record)
        self.entries = list(records)
        if records:  # the shards to come keep the columns (streaming lists them sorted)
            first = records[0]
            self._columns = dict(zip(first["column_names"], first["column_encodings"]))

    def finish(self) -> Manifest:
        self.end_shard()
        if not self.entries:
            raise ValueError("no samples were written")
        index = {"version": 2, "shards": self.entries}
        manifest = manifest_from_mds_index(index)
        index_text = json.dumps(index, sort_keys=True)
        write_text_atomic(os.path.join(self.out_dir, MDS_INDEX_NAME), index_text)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.out_dir, ".scratch.jpg"))
        manifest.meta = self.meta
        write_text_atomic(os.path.join(self.out_dir, MANIFEST_NAME), manifest.to_json())
        return manifest


def write_dataset(
    samples: Iterable[dict[str, Any]],
    out_dir: str,
    fmt: str,
    samples_per_shard: int = 1000,
    meta: dict | None = None,
    max_bytes: int = 256 * 2**20,
) -> Manifest:
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


def write_splits(
    samples: Iterable[tuple[str, dict[str, Any]]],
    out_dir: str,
    fmt: str,
    samples_per_shard: int = 1000,
    meta: dict | None = None,
    max_bytes: int = 256 * 2**20,
) -> dict[str, Manifest]:
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
