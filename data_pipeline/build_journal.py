"""A shard build that survives a crash: each finished shard is journaled with the position the
build had reached after it, and a restarted build keeps the finished shards and continues there.

The journal (`build_journal.jsonl` in the split directory) is append-only JSON lines: first the
build's settings (inputs' digest, tokenizer, sequence length, shard size...), then one line per
finished shard: the writer's records of its file(s) and the position after it (documents fed,
the packer's carry-over, tokens counted). Nothing read back is trusted: a journal of other
settings, a torn or malformed line, a file that is not the one the writer would have named next,
or a shard whose bytes no longer hash to the recorded sha256 ends the kept prefix, and the build
redoes everything after it. A finished build keeps its journal, so running it again verifies
every shard and rewrites only the manifest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from data_pipeline.errors import DataError
from data_pipeline.manifest import ShardInfo
from data_pipeline.safe_names import inside
from data_pipeline.storage import sha256_file, write_text_atomic

JOURNAL_NAME = "build_journal.jsonl"
JOURNAL_VERSION = 1

log = logging.getLogger(__name__)


class ResumableWriter(Protocol):
    """What the journal needs of a shard writer (`writers.WdsWriter`, `writers.MdsWriter`)."""

    out_dir: str

    def end_shard(self) -> list[dict]: ...

    def resume(self, records: list[dict]) -> None: ...

    def shard_names(self, first: int, count: int) -> list[str]: ...

    @staticmethod
    def shard_of(record: dict) -> ShardInfo: ...


def _intact(out_dir: str, shard: ShardInfo) -> bool:
    """The stored file is there, has the recorded size and hashes to the recorded sha256."""
    try:
        path = inside(out_dir, shard.name, JOURNAL_NAME)
        return (bool(shard.sha256) and os.path.getsize(path) == shard.bytes
                and sha256_file(path) == shard.sha256)
    except (OSError, ValueError):
        return False


class BuildJournal:
    """The record of one split's build (see the module docstring)."""

    def __init__(self, writer: ResumableWriter, settings: dict[str, Any],
                 position_ok: Callable[[dict], bool]):
        self.writer, self.position_ok = writer, position_ok
        self.settings = {"version": JOURNAL_VERSION, **settings}
        self.path = os.path.join(writer.out_dir, JOURNAL_NAME)

    def _entries(self) -> list[dict]:
        """The journaled shards of a build with these settings, up to the first bad line."""
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().split("\n")
        except OSError:
            return []
        try:
            if json.loads(lines[0]) != self.settings:
                log.warning("%s: written by a build of other settings; starting over", self.path)
                return []
        except ValueError:
            return []
        entries = []
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                records, position = entry["records"], entry["position"]
            except (ValueError, KeyError, TypeError):
                break  # a line torn by the crash, or not ours
            if not isinstance(records, list) or not records or not isinstance(position, dict):
                break
            entries.append({"records": records, "position": position})
        return entries

    def resume(self) -> dict[str, Any] | None:
        """Hand the writer the finished shards that verify; the position after the last of them
        (None: start from the beginning). Rewrites the journal to exactly what was kept."""
        kept: list[dict] = []
        records: list[dict] = []
        for entry in self._entries():
            try:
                shards = [self.writer.shard_of(r) for r in entry["records"]]
                if not self.position_ok(entry["position"]):
                    raise ValueError("position out of range")
            except (ValueError, TypeError, KeyError, AttributeError, DataError):
                log.warning("%s: a malformed entry; rebuilding from it", self.path)
                break
            # the files the writer would write next, under the names it would give them
            expected = self.writer.shard_names(len(records), len(shards))
            if [s.name for s in shards] != expected or not all(
                    _intact(self.writer.out_dir, s) for s in shards):
                log.warning("%s: shard %s is not the one journaled; rebuilding from it",
                            self.path, shards[0].name)
                break
            kept.append(entry)
            records += entry["records"]
        self.writer.resume(records)
        self._rewrite(kept)
        if kept:
            log.info("%s: %d finished shards verified, continuing after them", self.path,
                     len(records))
        return kept[-1]["position"] if kept else None

    def _rewrite(self, entries: list[dict]) -> None:
        lines = [json.dumps(x, sort_keys=True) + "\n" for x in [self.settings, *entries]]
        write_text_atomic(self.path, "".join(lines))

    def shard_done(self, position: dict[str, Any]) -> None:
        """Close the writer's open shard and journal it with the position after it."""
        records = self.writer.end_shard()
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"records": records, "position": position}, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
