"""Shard lists as webdataset users write them: brace ranges and alternatives
(`s3://b/ds/shard-{000000..000099}.tar`, `shard-{a,b}.tar`), globs (`data/ds/*.tar`) and
explicit lists joined by `::` (webdataset's separator), local or any fsspec URL.

A spec becomes (dataset root, shard names): the shards must share one directory, which is the
root the shard store reads from and caches under; a plain directory URL gives no names (the
directory's manifest, or a scan of its tar shards, lists them).
"""

from __future__ import annotations

import posixpath
import re

BRACE = re.compile(r"\{([^{}]*)\}")
RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(spec: str) -> list[str]:
    """Every string a brace pattern stands for, in order: {0..3} (zero padding kept from the
    first bound's width), {a,b,c}; several groups multiply."""
    match = BRACE.search(spec)
    if match is None:
        return [spec]
    body, head, tail = match.group(1), spec[:match.start()], spec[match.end():]
    found = RANGE.match(body)
    if found:
        lo, hi = int(found.group(1)), int(found.group(2))
        width = len(found.group(1)) if found.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        items = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ValueError(f"shard URL {spec!r}: cannot expand {{{body}}} (use {{000..099}} or"
                         " {a,b})")
    return [out for item in items for out in expand_braces(head + item + tail)]


def is_shard_spec(url: str) -> bool:
    """True for a pattern or list of shards, False for a dataset directory."""
    return "::" in url or bool(BRACE.search(url)) or any(c in url for c in "*?[")


def split_shard_spec(url: str, storage_options: dict | None = None
                     ) -> tuple[str, list[str] | None]:
    """(root URL, shard names relative to it) of a shard spec; (url, None) for a directory."""
    if not is_shard_spec(url):
        return url, None
    urls: list[str] = []
    for part in url.split("::"):
        for one in expand_braces(part.strip()):
            urls.extend(_glob(one, storage_options) if any(c in one for c in "*?[") else [one])
    if not urls:
        raise FileNotFoundError(f"shard URL {url!r} matches no shards")
    roots = {posixpath.dirname(u) for u in urls}
    if len(roots) != 1:
        raise ValueError(f"shard URL {url!r}: shards must share one directory, found"
                         f" {sorted(roots)[:3]}")
    names = [posixpath.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise ValueError(f"shard URL {url!r} names a shard twice")
    return roots.pop(), names


def _glob(pattern: str, storage_options: dict | None) -> list[str]:
    """Matches of a glob, sorted, as URLs with the pattern's own protocol prefix."""
    from data_pipeline.storage import open_fs

    fs, path = open_fs(pattern, storage_options)
    prefix = pattern[: pattern.index("://") + 3] if "://" in pattern else ""
    found = sorted(fs.glob(path))
    return [f"{prefix}{p}" if prefix and not p.startswith(prefix) else p for p in found]
