"""Builds written as one shard per task, by any number of worker processes, resumable shard by
shard (`data build images`, `data build latents`).

Why one shard per task: the shard a sample lands in is then fixed by the task list, not by which
worker ran it, so the output does not depend on the worker count. A finished shard leaves a
record in OUT/.build/ with a fingerprint of its inputs and its file's size; a rerun after a crash
keeps every shard whose record, inputs and file still agree, and the manifest (and MDS
index.json) is written once every shard is done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from data_pipeline.manifest import MANIFEST_NAME, MDS_INDEX_NAME, Manifest, ShardInfo
from data_pipeline.storage import write_text_atomic
from data_pipeline.writers import MdsWriter, WdsWriter

BUILD_DIR = ".build"


def write_task_shard(out: str, split: str, index: int, first_key: int, fmt: str,
                     samples: Iterable[dict[str, Any]], count: int) -> list[dict]:
    """Write shard `index` of a split from its samples; returns its manifest entries (MDS: the
    index.json entries; more than one when streaming's 2 GiB limit cut the shard)."""
    split_dir = os.path.join(out, split)
    tmp = os.path.join(out, BUILD_DIR, f"{split}-{index:06d}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if fmt == "wds":
        writer = WdsWriter(tmp, samples_per_shard=max(count, 1), max_bytes=2**62,
                           first_key=first_key)
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


def run_task(out: str, split: str, index: int, fingerprint: str,
             write: Callable[[], list[dict]]) -> list[dict]:
    """The entries of shard `index`: kept from an earlier run when its record, inputs
    (`fingerprint`) and file agree, else written now by `write()` and recorded."""
    record = os.path.join(out, BUILD_DIR, f"{split}-{index:06d}.json")
    done = _finished(record, fingerprint, os.path.join(out, split))
    if done is None:
        done = write()
        for entry in done:
            entry["bytes"] = os.path.getsize(os.path.join(out, split, _entry_name(entry)))
        write_text_atomic(record, json.dumps({"fingerprint": fingerprint, "entries": done}))
    return done


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


def finish_build(out: str, fmt: str, results: list[tuple[str, int, list[dict]]],
                 meta: dict) -> dict[str, Manifest]:
    """Write each split's manifest (and MDS index.json) from the (split, shard index, entries)
    of every task, then drop the build records."""
    manifests = {}
    for split in ("train", "val"):
        entries = [e for s, _, done in sorted(results) if s == split for e in done]
        if entries:
            manifests[split] = _finish_split(os.path.join(out, split), fmt, entries, meta)
    shutil.rmtree(os.path.join(out, BUILD_DIR), ignore_errors=True)
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
