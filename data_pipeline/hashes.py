"""File digests for every hash a manifest or MDS index may declare (sha256, sha1, md5, blake2b...,
xxh64/xxh128/xxh3 through the `xxhash` package when it is installed).

A writer records whichever hashes it was asked for (streaming's MDSWriter: any of them, often only
sha1 or xxh64); a reader that checks only sha256 would call a corrupt sha1-only set "verified".
Here every declared hash that can be computed is computed in one pass over the file; one that
cannot (xxh64 without `xxhash`, an unknown name) is reported as not checked, never as passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

try:
    import xxhash
except ImportError:  # optional: xxh* hashes are then reported as not checked
    xxhash = None

_XXH = ("xxh32", "xxh64", "xxh128", "xxh3_64", "xxh3_128")


def _new(algo: str):
    if algo in _XXH:
        return getattr(xxhash, algo)() if xxhash is not None and hasattr(xxhash, algo) else None
    try:
        return hashlib.new(algo)
    except (ValueError, TypeError):
        return None


def checkable(algo: str) -> bool:
    """Whether this process can compute `algo` (xxh* need the optional `xxhash` package)."""
    return algo not in ("shake_128", "shake_256") and _new(algo) is not None


def digest_file(path: str, algos: Iterable[str], chunk: int = 1 << 22) -> dict[str, str]:
    """{algo: hex digest} of the file for every checkable algo in `algos`, reading it once."""
    digests = {algo: _new(algo) for algo in algos if checkable(algo)}
    if not digests:
        return {}
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for d in digests.values():
                d.update(block)
    return {algo: d.hexdigest() for algo, d in digests.items()}
