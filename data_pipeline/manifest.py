"""The manifest of a sharded dataset: shards in canonical order, samples per shard, bytes and
checksums.

Canonical sample id = (samples in earlier shards) + index within the shard. The global order
(`order.py`) permutes these ids; everything else addresses samples by them.

Files: `manifest.json` (written by this project for both formats) and, for MDS, streaming's
`index.json`, which is enough on its own (foreign MDS datasets). Foreign WebDataset shards
without a manifest are indexed by scanning them (`pretrain data index` writes the manifest once).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from data_pipeline.errors import CorruptShardError, where
from data_pipeline.safe_names import relative_name

MANIFEST_NAME = "manifest.json"
MDS_INDEX_NAME = "index.json"


@dataclass
class ShardInfo:
    """One shard file, by name relative to the dataset root."""

    name: str
    samples: int
    bytes: int = -1
    sha256: str = ""
    compression: str = ""  # MDS only: codec of the stored file; the raw shard is decompressed
    raw_name: str = ""  # MDS only: name of the decompressed shard
    hashes: dict = field(default_factory=dict)  # other declared digests: {"sha1": hex, ...}

    def declared_hashes(self) -> dict[str, str]:
        """Every digest the writer recorded for the stored file, sha256 included."""
        return {**self.hashes, **({"sha256": self.sha256} if self.sha256 else {})}


@dataclass
class Manifest:
    """Everything a reader needs to address samples without opening a shard."""

    format: str  # wds | mds
    shards: list[ShardInfo]
    meta: dict = field(default_factory=dict)  # kind, fields, seq_len, vocab_size, num_classes...
    columns: dict = field(default_factory=dict)  # MDS: name -> [encoding, size or None] (sorted)

    @property
    def num_samples(self) -> int:
        return int(sum(s.samples for s in self.shards))

    def shard_offsets(self) -> np.ndarray:
        """Canonical id of the first sample of each shard, plus the total at the end."""
        return np.concatenate([[0], np.cumsum([s.samples for s in self.shards])]).astype(np.int64)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        shards = [ShardInfo(**s) for s in data["shards"]]
        manifest = cls(
            format=data["format"],
            shards=shards,
            meta=data.get("meta", {}),
            columns=data.get("columns", {}),
        )
        check_shards(manifest.shards, MANIFEST_NAME)
        return manifest


def check_shards(shards: list[ShardInfo], source: str) -> None:
    """Refuse what a reader must not trust: a shard name that leaves the dataset root, a sample
    count that is not a positive integer (a zero or negative count silently drops the shard from
    the order), a byte count that is not an integer. Errors name the file and the shard."""
    for i, shard in enumerate(shards):
        relative_name(shard.name, f"{source} shards[{i}].name")
        if shard.raw_name:
            relative_name(shard.raw_name, f"{source} shards[{i}].raw_name")
        count = shard.samples
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise CorruptShardError(
                f"{where(shard.name)}: {source} says {count!r} samples; a shard's sample count"
                " must be a positive integer"
            )
        if isinstance(shard.bytes, bool) or not isinstance(shard.bytes, int) or shard.bytes < -1:
            raise CorruptShardError(f"{where(shard.name)}: {source} says {shard.bytes!r} bytes")
        if not isinstance(shard.hashes, dict):
            raise CorruptShardError(f"{where(shard.name)}: {source} hashes must be a mapping")


def manifest_from_mds_index(index: dict) -> Manifest:
    """A Manifest from streaming's index.json (version 2, format mds)."""
    if index.get("version") != 2:
        raise ValueError(f"unsupported MDS index version {index.get('version')!r} (expected 2)")
    shards, columns = [], {}
    for entry in index["shards"]:
        if entry.get("format") != "mds":
            raise ValueError(f"shard format {entry.get('format')!r} is not mds")
        cols = {
            n: [e, s]
            for n, e, s in zip(
                entry["column_names"], entry["column_encodings"], entry["column_sizes"]
            )
        }
        if columns and cols != columns:
            raise ValueError("MDS shards disagree on their columns")
        columns = cols
        raw, zipped = entry["raw_data"], entry.get("zip_data")
        stored = zipped or raw
        hashes = dict(stored.get("hashes") or {})
        shards.append(
            ShardInfo(
                name=stored["basename"],
                samples=entry["samples"],
                bytes=int(stored["bytes"]),
                sha256=hashes.pop("sha256", ""),
                compression=(entry.get("compression") or "") if zipped else "",
                raw_name=raw["basename"],
                hashes=hashes,
            )
        )
    check_shards(shards, MDS_INDEX_NAME)
    return Manifest(format="mds", shards=shards, columns=columns)


def agree(ours: Manifest, index: Manifest) -> None:
    """An MDS set carries two descriptions (our manifest.json and streaming's index.json); the
    reader uses the index, so a manifest that disagrees with it (another shard list, count, size
    or sha256) is an error naming the shard, not a file silently ignored."""
    if [s.name for s in ours.shards] != [s.name for s in index.shards]:
        raise CorruptShardError(f"{MANIFEST_NAME} and {MDS_INDEX_NAME} list different shards")
    for mine, theirs in zip(ours.shards, index.shards):
        for what in ("samples", "bytes", "sha256"):
            a, b = getattr(mine, what), getattr(theirs, what)
            if a != b and a not in ("", -1) and b not in ("", -1):
                raise CorruptShardError(
                    f"{where(mine.name)}: {MANIFEST_NAME} says {what} {a!r}, {MDS_INDEX_NAME}"
                    f" says {b!r}"
                )
