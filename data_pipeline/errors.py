"""Errors for bad input. Each message names the shard (and the sample key when there is one).

The classes take a single message argument so that an error raised inside a DataLoader worker is
re-created in the main process with its message intact.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """Bad or missing input data."""


class ShardNotFoundError(DataError):
    """A shard listed by the manifest does not exist."""


class ChecksumError(DataError):
    """A shard's bytes do not match the checksum recorded in the manifest."""


class CorruptShardError(DataError):
    """A shard cannot be parsed (truncated, bad header, wrong sample count)."""


class BadSampleError(DataError):
    """One sample cannot be decoded (the shard itself is readable)."""


class UnsafeEncodingError(DataError):
    """The data would need unpickling (or another code-executing decoder) to read."""


def where(shard: str, key: str | None = None) -> str:
    """`shard 'x.tar'` or `shard 'x.tar', sample 'k'`, for error messages."""
    return f"shard {shard!r}" + (f", sample {key!r}" if key is not None else "")
