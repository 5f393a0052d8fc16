"""The commit protocol: how a checkpoint directory becomes visible, and how complete ones are found.

A checkpoint is written into `step_XXXXXXXX.partial/`; `commit` lists every file with its size
in `manifest.json` (written last) and renames the directory to `step_XXXXXXXX/` (atomic). A
directory is complete when it has a final name, a manifest, and every listed file with the
listed size; anything else (a kill mid-save, a removed or truncated shard) is skipped with a
warning naming it, and the previous complete checkpoint is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

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


def write_manifest(path: Path, step: int) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"step": step, "files": {str(p.relative_to(path)): p.stat().st_size for p in files}}
    write_json_atomic(path / MANIFEST, manifest)


def commit(partial: Path, final: Path, step: int) -> None:
    """Make `partial` visible as `final`: manifest last, then one atomic rename (replacing a
    re-save of the same step, e.g. the end save after a signal save)."""
    write_manifest(partial, step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    fsync_dir(final.parent)


def check_complete(path: Path) -> str | None:
    """None when `path` is a complete checkpoint, else the reason it is not."""
    if not STEP_DIR.match(path.name):
        return f"{path.name} is not a committed checkpoint name (a save was interrupted)"
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        return f"{manifest_path} is missing"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        return f"{manifest_path} is unreadable ({e})"
    for rel, size in files.items():
        f = path / rel
        if not f.exists():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the manifest says {size}"
    return None


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


def latest_complete(root: Path, warn: bool = True) -> Path | None:
    """The newest complete checkpoint under `root`; incomplete ones are skipped with a warning."""
    if root.exists() and warn:
        for torn in sorted(root.glob("*" + PARTIAL_SUFFIX)):
            log.warning("skipping checkpoint %s: %s", torn, check_complete(torn))
    for path in reversed(list_checkpoints(root)):
        reason = check_complete(path)
        if reason is None:
            return path
        if warn:
            log.warning("skipping incomplete checkpoint %s: %s", path, reason)
    return None


def read_train_state(path: Path) -> dict:
    return json.loads((path / TRAIN_STATE).read_text())
