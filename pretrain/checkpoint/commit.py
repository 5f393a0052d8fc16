"""The commit protocol: how a checkpoint directory becomes visible, and how complete ones are found.

A checkpoint is written into `step_XXXXXXXX.partial/`; `commit` lists every file with its size
and content checksum in `manifest.json` (written last; integrity.py) and renames the directory
to `step_XXXXXXXX/` (atomic). A directory is complete when it has a final name, a manifest, and
every listed file with the listed size (cheap: a stat per file); anything else (a kill
mid-save, a removed or truncated shard) is skipped with a warning naming it, and the previous
complete checkpoint is used. Content (`verify_checkpoint`) is checked before a checkpoint is
loaded (checkpointer.py) and by `pretrain ckpt verify`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from pretrain.checkpoint import integrity
from pretrain.run_dir import write_json_atomic

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
TRAIN_STATE = "train_state.json"
PARTIAL_SUFFIX = ".partial"


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def partial_dir(final: Path) -> Path:
    """Where the checkpoint that will be `final` is written until it is committed."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: Path, step: int, checksums: dict[str, str] | None = None) -> None:
    """List every file under `path` with its size and checksum. `checksums` (relative path ->
    digest) are those computed while the files were written; any other file is read and hashed
    here, once (DeepSpeed's files, which its engine writes)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
    names = [str(p.relative_to(path)) for p in files]
    known = checksums or {}
    manifest = {
        "step": step,
        "files": {n: p.stat().st_size for n, p in zip(names, files)},
        "checksum": integrity.ALGORITHM,
        "checksums": {n: known.get(n) or integrity.digest_file(p) for n, p in zip(names, files)},
    }
    write_json_atomic(path / MANIFEST, manifest)


def commit(partial: Path, final: Path, step: int, checksums: dict[str, str] | None = None) -> None:
    """Make `partial` visible as `final`: manifest last, then one atomic rename (replacing a
    re-save of the same step, e.g. the end save after a signal save). `checksums`: see
    `write_manifest`."""
    write_manifest(partial, step, checksums)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(final.parent)


def read_manifest(path: Path) -> dict:
    """The manifest of checkpoint `path`; CheckpointError (naming it) when it cannot be read."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest.get("files"), dict):
            raise KeyError("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{manifest_path} is unreadable ({e})") from e
    return manifest


def check_complete(path: Path) -> str | None:
    """None when `path` is a complete checkpoint, else the reason it is not."""
    if not STEP_DIR.match(path.name):
        return f"{path.name} is not a committed checkpoint name (a save was interrupted)"
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return f"{manifest_path} is missing"
    try:
        files = read_manifest(path)["files"]
    except CheckpointError as e:
        return str(e)
    for rel, size in files.items():
        f = path / rel
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size}"
    return None


def verify_checkpoint(path: Path, names: list[str] | None = None) -> str | None:
    """None when `path` is complete and the files `names` (default: all) match their manifest
    checksums, else a one-line reason naming the first file that does not."""
    reason = check_complete(path)
    if reason is not None:
        return reason
    return integrity.verify_files(path, read_manifest(path), names)


def require_complete(path: Path) -> None:
    reason = check_complete(path)
    if reason is not None:
        raise CheckpointError(f"{path} is not a complete checkpoint: {reason}")


def list_checkpoints(root: Path) -> list[Path]:
    """Committed-looking checkpoint directories, oldest first."""
    if not root.exists():
        return []
    found = (p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))
    return sorted(found, key=lambda p: p.name)


def complete_checkpoints(root: Path, warn: bool = True) -> Iterator[Path]:
    """Complete checkpoints under `root`, newest first (lazily: each is checked when reached);
    incomplete ones are skipped with a warning naming the reason."""
    if root.exists() and warn:
        for torn in sorted(root.glob("*" + PARTIAL_SUFFIX)):
            log.warning("skipping checkpoint %s: %s", torn, check_complete(torn))
    for path in reversed(list_checkpoints(root)):
        reason = check_complete(path)
        if reason is None:
            yield path
        elif warn:
            log.warning("skipping incomplete checkpoint %s: %s", path, reason)


def latest_complete(root: Path, warn: bool = True) -> Path | None:
    """The newest complete checkpoint under `root`; incomplete ones are skipped with a warning."""
    return next(complete_checkpoints(root, warn), None)


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())
