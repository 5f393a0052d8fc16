"""The one gate between a name read from a file and a path on disk.

Shard names in a manifest or index, run names in a sweep file or run list: all are written by
someone else and arrive as plain strings. Joined to a root unchecked, `/etc/x` or `../../x` lands
anywhere the user can write (a remote manifest can aim the shard cache at ~/.bashrc). Every place
in data_pipeline, launch and the scaling tools that turns such a name into a path goes through
`inside`. This module imports nothing from the project, so every layer can use it.
"""

from __future__ import annotations

import os


class UnsafeNameError(ValueError):
    """A name read from a file would leave its root (absolute, `..`, or a stray separator)."""


def _refuse(name: object, source: str, why: str) -> UnsafeNameError:
    return UnsafeNameError(f"{source}: entry {name!r} {why}; refusing to use it as a path")


def relative_name(name: object, source: str) -> str:
    """`name` if it is a relative path that stays below its root (sub-folders allowed):
    not empty, not absolute, no `.`/`..`/empty component, no backslash or NUL.
    `source` names the file and the entry, e.g. "manifest.json shards[3].name"."""
    if not isinstance(name, str) or not name:
        raise _refuse(name, source, "is not a non-empty string")
    if "\0" in name or "\\" in name:
        raise _refuse(name, source, "contains a NUL byte or a backslash")
    if name.startswith("/") or os.path.isabs(name):
        raise _refuse(name, source, "is an absolute path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise _refuse(name, source, "has a '..', '.' or empty path component")
    return name


def plain_name(name: object, source: str) -> str:
    """`name` if it is a single path component (a run name, a file name): no separator at all."""
    relative_name(name, source)
    if "/" in name:  # type: ignore[operator]  # relative_name proved it is a str
        raise _refuse(name, source, "contains a path separator where a plain name is expected")
    return name  # type: ignore[return-value]


def inside(root: str | os.PathLike, name: object, source: str, plain: bool = True) -> str:
    """`root/name`, refusing a name that would leave `root` (see `plain_name`/`relative_name`)."""
    checked = plain_name(name, source) if plain else relative_name(name, source)
    return os.path.join(os.fspath(root), checked)
