"""`pretrain data build images`: an ImageNet-style folder (one subfolder per class) or a list
file (`path label` lines) -> WDS or MDS shards, one shard per task over K worker processes,
resumable shard by shard.

The shard a file lands in is fixed by the sorted file list (shard i of a split holds its files
i*S .. i*S+S-1), so the output does not depend on K. JPEGs are stored as their own bytes (no
re-encode, `sources.folder_image`) unless --size asks for a resize. A finished shard leaves a
record in OUT/.build/ naming its inputs (paths, sizes, mtimes) and its file's size and sha256;
a rerun after a crash skips every shard whose record, inputs and file still agree, and writes the
manifest (and MDS index.json) once every shard is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from multiprocessing import get_context

from data_pipeline.manifest import MANIFEST_NAME, MDS_INDEX_NAME, Manifest, ShardInfo
from data_pipeline.order import held_out
from data_pipeline.sources import folder_image, list_folder
from data_pipeline.storage import write_text_atomic
from data_pipeline.writers import MdsWriter, WdsWriter

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


def _write_shard(task: Task, out: str, fmt: str, size: int, mode: str) -> list[dict]:
    """Write one shard of a split; returns its manifest entries (MDS: with the index entry)."""
    split, index, files, first = task
    split_dir = os.path.join(out, split)
    tmp = os.path.join(out, ".build", f"{split}-{index:06d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    samples = ({"image": folder_image(path, size, mode), "label": label} for path, label in files)
    if fmt == "wds":
        writer = WdsWriter(tmp, samples_per_shard=len(files), max_bytes=2**62, first_key=first)
        for sample in samples:
            writer.write(sample)
        (info,) = writer.finish().shards
        info.name = f"shard-{index:06d}.tar"
        os.replace(os.path.join(tmp, "shard-000000.tar"), os.path.join(split_dir, info.name))
        entries = [{"shard": asdict(info)}]
    else:
        writer = MdsWriter(tmp, samples_per_shard=2**40, max_bytes=2**31 - 1)
        for sample in samples:
            writer.write(sample)
        writer.finish()
        with open(os.path.join(tmp, MDS_INDEX_NAME)) as f:
            parts = json.load(f)["shards"]
        entries = []
        for j, entry in enumerate(parts):
            name = f"shard.{index:05d}.mds" if len(parts) == 1 else f"shard.{index:05d}.{j}.mds"
            os.replace(os.path.join(tmp, entry["raw_data"]["basename"]),
                       os.path.join(split_dir, name))
            entry["raw_data"]["basename"] = name
            entries.append({"index": entry})
    shutil.rmtree(tmp, ignore_errors=True)
    return entries


def _run_task(args: tuple[Task, str, str, int, str]) -> tuple[str, int, list[dict]]:
    task, out, fmt, size, mode = args
    record = os.path.join(out, ".build", f"{task[0]}-{task[1]:06d}.json")
    fingerprint = _fingerprint(task, fmt, size, mode)
    done = _finished(record, fingerprint, os.path.join(out, task[0]))
    if done is None:
        done = _write_shard(task, out, fmt, size, mode)
        for entry in done:
            entry["bytes"] = os.path.getsize(os.path.join(out, task[0], _entry_name(entry)))
        write_text_atomic(record, json.dumps({"fingerprint": fingerprint, "entries": done}))
    return task[0], task[1], done


def _entry_name(entry: dict) -> str:
    return entry["shard"]["name"] if "shard" in entry else entry["index"]["raw_data"]["basename"]


def _finished(record: str, fingerprint: str, split_dir: str) -> list[dict] | None:
    """The entries of a shard finished by an earlier run, if its inputs and file still agree."""
    try:
        with open(record) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("fingerprint") != fingerprint:
        return None
    for entry in saved["entries"]:
        path = os.path.join(split_dir, _entry_name(entry))
        if not os.path.exists(path) or os.path.getsize(path) != entry["bytes"]:
            return None
    return saved["entries"]


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
    os.makedirs(os.path.join(out, ".build"), exist_ok=True)
    jobs = [(t, out, fmt, size, mode) for t in tasks]
    if workers <= 1:
        results = [_run_task(job) for job in jobs]
    else:
        with get_context("spawn").Pool(workers) as pool:
            results = pool.map(_run_task, jobs, chunksize=1)
    meta = {"kind": "images", "name": os.path.basename(src.rstrip("/")), "classes": classes,
            "num_classes": len(classes)}
    manifests = {}
    for split in ("train", "val"):
        entries = [e for s, _, done in sorted(results) if s == split for e in done]
        if entries:
            manifests[split] = _finish_split(os.path.join(out, split), fmt, entries, meta)
    shutil.rmtree(os.path.join(out, ".build"), ignore_errors=True)
    return manifests


def _finish_split(split_dir: str, fmt: str, entries: list[dict], meta: dict) -> Manifest:
    if fmt == "wds":
        shards = [ShardInfo(**e["shard"]) for e in entries]
        manifest = Manifest(format="wds", shards=shards, meta=meta)
    else:
        from data_pipeline.manifest import manifest_from_mds_index

        index = {"version": 2, "shards": [e["index"] for e in entries]}
        write_text_atomic(os.path.join(split_dir, MDS_INDEX_NAME), json.dumps(index, indent=1))
        manifest = manifest_from_mds_index(index)
        manifest.meta = meta
    write_text_atomic(os.path.join(split_dir, MANIFEST_NAME), manifest.to_json())
    return manifest
