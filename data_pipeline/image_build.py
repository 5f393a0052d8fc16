"""`pretrain data build images`: an ImageNet-style folder (one subfolder per class) or a list
file (`path label` lines) -> WDS or MDS shards, one shard per task over K worker processes,
resumable shard by shard (`shard_tasks.py`).

The shard a file lands in is fixed by the sorted file list (shard i of a split holds its files
i*S .. i*S+S-1), so the output does not depend on K. JPEGs are stored as their own bytes (no
re-encode, `sources.folder_image`) unless --size asks for a resize. A shard's fingerprint names
its inputs (paths, sizes, mtimes), so a rerun redoes a shard whose files changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from multiprocessing import get_context

from data_pipeline.manifest import Manifest
from data_pipeline.order import held_out
from data_pipeline.shard_tasks import BUILD_DIR, finish_build, run_task, write_task_shard
from data_pipeline.sources import folder_image, list_folder

Task = tuple[str, int, list[tuple[str, int]], int]  # split, shard index, (path, label)s, 1st key


def list_file(path: str) -> tuple[list[str], list[tuple[str, int]]]:
    """A list file: one `IMAGE_PATH LABEL` per line (the label after the last whitespace, paths
    relative to the list's folder); '#' lines and blank lines are skipped."""
    base = os.path.dirname(os.path.abspath(path))
    files = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{number}: expected 'IMAGE_PATH LABEL', got {line[:80]!r}")
            files.append((os.path.join(base, parts[0]), int(parts[1])))
    if not files:
        raise ValueError(f"{path}: no images listed")
    classes = [str(c) for c in range(max(label for _, label in files) + 1)]
    return classes, files


def _fingerprint(task: Task, fmt: str, size: int, mode: str) -> str:
    split, index, files, first = task
    h = hashlib.sha256(json.dumps([split, index, first, fmt, size, mode]).encode())
    for path, label in files:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _run_task(args: tuple[Task, str, str, int, str]) -> tuple[str, int, list[dict]]:
    task, out, fmt, size, mode = args
    split, index, files, first = task

    def write() -> list[dict]:
        samples = ({"image": folder_image(path, size, mode), "label": label}
                   for path, label in files)
        return write_task_shard(out, split, index, first, fmt, samples, len(files))

    return split, index, run_task(out, split, index, _fingerprint(task, fmt, size, mode), write)


def build_image_folder(src: str, out: str, fmt: str, shard_samples: int = 1000,
                       val_fraction: float = 0.2, size: int = 0, mode: str = "RGB",
                       workers: int = 1) -> dict[str, Manifest]:
    """Write OUT/train and OUT/val from an image folder or a list file; returns their
    manifests."""
    if fmt not in ("wds", "mds"):
        raise ValueError(f"format {fmt!r}: choose wds or mds")
    if shard_samples < 1:
        raise ValueError(f"--shard-samples {shard_samples}: need at least 1")
    classes, files = list_file(src) if os.path.isfile(src) else list_folder(src)
    is_val = held_out(len(files), val_fraction)
    tasks: list[Task] = []
    for split, want in (("train", False), ("val", True)):
        part = [f for f, v in zip(files, is_val) if v == want]
        if part:
            os.makedirs(os.path.join(out, split), exist_ok=True)
        for i in range(0, len(part), shard_samples):
            tasks.append((split, i // shard_samples, part[i:i + shard_samples], i))
    os.makedirs(os.path.join(out, BUILD_DIR), exist_ok=True)
    jobs = [(t, out, fmt, size, mode) for t in tasks]
    if workers <= 1:
        results = [_run_task(job) for job in jobs]
    else:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_run_task, jobs, chunksize=1)
    meta = {"kind": "images", "name": os.path.basename(src.rstrip("/")), "classes": classes,
            "num_classes": len(classes)}
    return finish_build(out, fmt, results, meta)
