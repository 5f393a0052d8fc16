"""The manifest of a sharded dataset: shards in canonical order, samples per shard, bytes, checksums.

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
        return cls(format=data["format"], shards=shards, meta=data.get("meta", {}),
                   columns=data.get("columns", {}))


def manifest_from_mds_index(index: dict) -> Manifest:
    """A Manifest from streaming's index.json (version 2, format mds)."""
    if index.get("version") != 2:
        raise ValueError(f"unsupported MDS index version {index.get('version')!r} (expected 2)")
    shards, columns = [], {}
    for entry in index["shards"]:
        if entry.get("format") != "mds":
            raise ValueError(f"shard format {entry.get('format')!r} is not mds")
        cols = {n: [e, s] for n, e, s in zip(entry["column_names"], entry["column_encodings"],
                                              entry["column_sizes"])}
        if columns and cols != columns:
            raise ValueError("MDS shards disagree on their columns")
        columns = cols
        raw, zipped = entry["raw_data"], entry.get("zip_data")
        stored = zipped or raw
        shards.append(ShardInfo(
            name=stored["basename"], samples=int(entry["samples"]), bytes=int(stored["bytes"]),
            sha256=(stored.get("hashes") or {}).get("sha256", ""),
            compression=(entry.get("compression") or "") if zipped else "",
            raw_name=raw["basename"],
        ))
    return Manifest(format="mds", shards=shards, columns=columns)
