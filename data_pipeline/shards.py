"""Random access to the samples of one local shard file, for both formats.

A reader returns a sample as `{field: (encoding, raw bytes)}`; `decode.py` turns it into arrays.
WebDataset tar: the member headers are scanned once (tarfile, no data read) into a table of
byte ranges; samples are consecutive members sharing a key (webdataset's grouping rule: the key
is the path up to the first dot of the file name, the rest is the field/extension).
MDS: the shard header holds the sample offsets; column sizes are in each sample's head.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from data_pipeline.errors import CorruptShardError, ShardNotFoundError, where
from data_pipeline.tar_index import TarFormatError, scan_tar

RawSample = dict[str, tuple[str, bytes]]


class _File:
    """An open file read with pread (safe to share between threads)."""

    def __init__(self, path: str, name: str):
        self.name = name
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as e:
            raise ShardNotFoundError(f"{where(name)}: not found at {path}") from e
        self.size = os.fstat(self.fd).st_size

    def read(self, offset: int, size: int, key: str | None = None) -> bytes:
        if offset + size > self.size:
            raise CorruptShardError(
                f"{where(self.name, key)}: needs bytes {offset}..{offset + size} but the file has"
                f" {self.size} (truncated?)"
            )
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise CorruptShardError(f"{where(self.name, key)}: short read at offset {offset}")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TarShard:
    """A WebDataset tar shard indexed as, per sample: key, byte span, and the fields' (start,
    end) inside that span (a sample's members are consecutive, so one read fetches it)."""

    def __init__(self, path: str, name: str, expected_samples: int | None = None,
                 check_headers: bool = True):
        self.name = name
        self.file = _File(path, name)
        self.check_headers = check_headers
        self.keys: list[str] = []
        self.spans: list[list[int]] = []  # [start, end] in the file
        self.members: list[dict[str, tuple[int, int]]] = []  # ext -> absolute (offset, size)
        self._scan(path)
        if expected_samples is not None and expected_samples != len(self.keys):
            raise CorruptShardError(
                f"{where(name)}: holds {len(self.keys)} samples, the manifest says "
                f"{expected_samples} (truncated or replaced?)"
            )

    def _scan(self, path: str) -> None:
        try:
            members = scan_tar(path, self.check_headers)
        except (TarFormatError, tarfile.TarError) as e:
            offset = f" at byte {e.offset}" if isinstance(e, TarFormatError) else ""
            raise CorruptShardError(
                f"{where(self.name)}: not a readable tar file{offset}: {e}"
                " (truncated or corrupt shard)"
            ) from e
        for member, offset, size in members:
            dot = member.find(".", member.rfind("/") + 1)
            if dot <= member.rfind("/") + 1 or dot == len(member) - 1:
                continue  # no key or no extension: not part of a sample (webdataset skips these)
            key, ext = member[:dot], member[dot + 1 :]
            if not self.keys or self.keys[-1] != key:
                self.keys.append(key)
                self.members.append({})
                self.spans.append([offset, offset + size])
            self.members[-1][ext] = (offset, size)
            self.spans[-1][1] = offset + size
        # field slices relative to the span, computed once instead of per read
        self.fields = [
            [(ext, off - span[0], off - span[0] + size) for ext, (off, size) in m.items()]
            for m, span in zip(self.members, self.spans)
        ]

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, index: int) -> str:
        return self.keys[index]

    def read(self, index: int) -> RawSample:
        """One pread for the whole sample: its members are consecutive in the archive."""
        start, end = self.spans[index]
        span = self.file.read(start, end - start, self.keys[index])
        return {ext: (ext, span[a:b]) for ext, a, b in self.fields[index]}

    def close(self) -> None:
        self.file.close()


class MdsShard:
    """An (uncompressed) MDS shard: [n: u32][offsets: (n+1) u32][config][samples]."""

    def __init__(self, path: str, name: str, columns: dict, expected_samples: int | None = None):
        self.name = name
        self.file = _File(path, name)
        self.names = list(columns)
        self.encodings = [columns[n][0] for n in self.names]
        self.sizes = [columns[n][1] for n in self.names]
        self.num_var = sum(size is None for size in self.sizes)
        head = self.file.read(0, 4)
        n = int(np.frombuffer(head, np.uint32)[0])
        if expected_samples is not None and n != expected_samples:
            raise CorruptShardError(
                f"{where(name)}: header says {n} samples, the index says {expected_samples}"
            )
        self.offsets = np.frombuffer(self.file.read(4, 4 * (n + 1)), np.uint32).astype(np.int64)
        if np.any(np.diff(self.offsets) < 0) or self.offsets[-1] > self.file.size:
            raise CorruptShardError(
                f"{where(name)}: sample offsets end at byte {int(self.offsets[-1])} but the file "
                f"has {self.file.size} (truncated or corrupt)"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def key(self, index: int) -> str:
        return str(index)

    def read(self, index: int) -> RawSample:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        data = self.file.read(start, end - start, str(index))
        head = 4 * self.num_var
        var_sizes = iter(np.frombuffer(data[:head], np.uint32).tolist())
        out, pos = {}, head
        for name, enc, size in zip(self.names, self.encodings, self.sizes):
            size = next(var_sizes) if size is None else size
            out[name] = (enc, data[pos : pos + size])
            pos += size
        if pos != len(data):
            raise CorruptShardError(
                f"{where(self.name, str(index))}: columns take {pos} bytes, the sample has "
                f"{len(data)}"
            )
        return out

    def close(self) -> None:
        self.file.close()
