"""One sharded dataset as seen by a reader: manifest, shard store, global order, open shards."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict

import numpy as np

from data_pipeline.config import DataConfig
from data_pipeline.decode import UNSAFE
from data_pipeline.errors import (
    CorruptShardError,
    DataError,
    ShardNotFoundError,
    UnsafeEncodingError,
    where,
)
from data_pipeline.manifest import (
    MANIFEST_NAME,
    MDS_INDEX_NAME,
    Manifest,
    ShardInfo,
    agree,
    manifest_from_mds_index,
)
from data_pipeline.order import ShardedOrder
from data_pipeline.safe_names import relative_name
from data_pipeline.shard_urls import split_shard_spec
from data_pipeline.shards import MdsShard, RawSample, TarShard
from data_pipeline.storage import ShardStore, write_text_atomic

log = logging.getLogger(__name__)
FORMATS = ("wds", "mds")


def _decompress(path: str, shard: ShardInfo, cache_dir: str, in_place: bool) -> str:
    """Decompressed copy of a compressed MDS shard in the cache, made once per content: the copy
    is named by the compressed file's identity (declared hashes, and for a file read in place its
    size, mtime and inode; a downloaded one is already named by content), so a set rewritten in
    place, or another set with the same shard names, is decompressed afresh."""
    identity = f"{sorted(shard.declared_hashes().items())}|{os.path.realpath(path)}"
    if in_place:
        st = os.stat(path)
        identity += f"|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    base = os.path.basename(relative_name(shard.raw_name, f"{MDS_INDEX_NAME} raw_data.basename"))
    dest = os.path.join(cache_dir, "raw", f"{key}-{base}")
    if os.path.exists(dest):
        return dest
    if shard.compression.split(":")[0] != "zstd":
        raise CorruptShardError(f"{where(shard.name)}: compression {shard.compression!r} is not"
                                " supported (zstd is)")
    import zstd

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(path, "rb") as f:
        try:
            data = zstd.decompress(f.read())
        except Exception as e:
            raise CorruptShardError(f"{where(shard.name)}: cannot decompress: {e}") from e
    tmp = f"{dest}.part-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, dest)
    return dest


def scan_wds_manifest(store: ShardStore, names: list[str] | None = None) -> Manifest:
    """Manifest of a directory of tar shards without one (foreign WebDataset data), or of the
    named shards: every shard's samples are counted, once per content (the count is remembered
    under the cache dir, keyed by the server's size and etag/mtime). `pretrain data index`
    writes a manifest with checksums instead."""
    if names is None:
        names = sorted(os.path.basename(p) for p in store.fs.glob(f"{store.root}/*.tar"))
    if not names:
        raise ShardNotFoundError(f"no {MANIFEST_NAME} and no *.tar shards under {store.url}")
    memos = {name: _count_memo(store, name) for name in names}
    known = {name: _read_count(memo) for name, memo in memos.items() if memo is not None}
    todo = [name for name in names if known.get(name) is None]
    if todo:
        log.warning("%s has no %s; scanning %d of its %d shards to count samples (run `pretrain "
                    "data index` to write one)", store.url, MANIFEST_NAME, len(todo), len(names))
    shards = []
    for name in names:
        if known.get(name) is None:
            reader = TarShard(store.local_path(ShardInfo(name=name, samples=-1)), name)
            known[name] = (len(reader), reader.file.size)
            reader.close()
            if memos[name] is not None:
                os.makedirs(os.path.dirname(memos[name]), exist_ok=True)
                samples, size = known[name]
                write_text_atomic(memos[name], json.dumps({"samples": samples, "bytes": size}))
        samples, size = known[name]
        shards.append(ShardInfo(name=name, samples=samples, bytes=size))
    return Manifest(format="wds", shards=shards)


def _count_memo(store: ShardStore, name: str) -> str | None:
    """Where a shard's sample count is remembered: a file named by the shard's identity on the
    server (URL, size and etag or mtime); None when the server gives no etag/mtime (a rewrite
    of the same size could not be told apart, so nothing is remembered)."""
    info = store.fs.info(store.remote_path(name))
    stamp = next((info[k] for k in ("ETag", "etag", "mtime", "LastModified")
                  if info.get(k) is not None), None)
    if stamp is None:
        return None
    identity = f"{store.url}|{name}|{info.get('size')}|{stamp}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return os.path.join(store.cache_dir, "counts", f"{key}.json")


def _read_count(path: str) -> tuple[int, int] | None:
    """A remembered (samples, bytes), or None if absent or not exactly what we write."""
    try:
        with open(path) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(memo, dict) or set(memo) != {"samples", "bytes"}:
        return None
    samples, size = memo["samples"], memo["bytes"]
    valid = all(type(v) is int for v in (samples, size)) and samples > 0 and size > 0
    return (samples, size) if valid else None


def select_shards(manifest: Manifest, names: list[str], url: str) -> Manifest:
    """The manifest of the named shards (a brace pattern, glob or list), in the order given."""
    by_name = {s.name: s for s in manifest.shards}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ShardNotFoundError(f"{url}: {missing[0]} is not in the dataset's manifest"
                                 f" ({len(missing)} of the {len(names)} shards named are missing)")
    return Manifest(format=manifest.format, shards=[by_name[n] for n in names],
                    meta=manifest.meta, columns=manifest.columns)


def load_manifest(store: ShardStore, fmt: str, names: list[str] | None = None) -> Manifest:
    """The dataset's manifest (ours, MDS index.json, or a scan of foreign tar shards); with
    `names` (from a shard pattern), only those shards."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format={fmt!r}: sharded formats are {FORMATS}")
    raw = store.read_small(MANIFEST_NAME)
    ours = Manifest.from_dict(json.loads(raw)) if raw is not None else None
    if ours is not None and ours.format != fmt:
        raise ValueError(f"{store.url} holds {ours.format} shards, but data.format={fmt!r}")
    if fmt == "wds" and names is not None and ours is None:
        manifest = scan_wds_manifest(store, names)
    elif fmt == "wds":
        manifest = ours or scan_wds_manifest(store)
    else:
        index = store.read_small(MDS_INDEX_NAME)
        if index is None:
            raise ShardNotFoundError(f"no {MDS_INDEX_NAME} under {store.url} (not an MDS dataset?)")
        manifest = manifest_from_mds_index(json.loads(index))
        if ours is not None:
            agree(ours, manifest)
            manifest.meta = ours.meta
    if names is not None:
        manifest = select_shards(manifest, names, store.url)
    if manifest.num_samples == 0:
        raise DataError(f"{store.url}: the dataset has no samples")
    for column, (encoding, _) in manifest.columns.items():
        if encoding.split(":")[0] in UNSAFE:
            raise UnsafeEncodingError(
                f"{store.url}: MDS column {column!r} is encoded as {encoding!r}, which needs"
                " unpickling (arbitrary code execution); refusing to read it. Re-write the dataset"
                " with a safe encoding (ndarray, json, int, png...)")
    return manifest


class ShardedSource:
    """A dataset: canonical ids -> raw samples, through a per-process cache of open shards."""

    def __init__(self, url: str, fmt: str, cfg: DataConfig, shuffle: bool, max_open: int = 0):
        if not url:
            raise ValueError(f"data.format={fmt!r} needs a dataset URL (data.train_url / val_url)")
        self.url, self.fmt = url, fmt
        root, names = split_shard_spec(url, cfg.storage_options)  # brace patterns, globs, lists
        self.store = ShardStore(root, cfg.storage_options, cfg.cache_dir, cfg.verify_checksums,
                                int(cfg.cache_limit_mb * 2**20))
        self.manifest = load_manifest(self.store, fmt, names)
        self.order = ShardedOrder([s.samples for s in self.manifest.shards], cfg.seed,
                                  cfg.shuffle_window, shuffle)
        self.max_open = max_open or cfg.shuffle_window + 2
        self._open: OrderedDict[int, TarShard | MdsShard | Exception] = OrderedDict()

    @property
    def num_samples(self) -> int:
        return self.manifest.num_samples

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # file descriptors stay with their process
        return state

    def shard_name(self, shard: int) -> str:
        return self.manifest.shards[shard].name

    def prefetch(self, ids: np.ndarray) -> None:
        for shard in np.unique(self.order.locate(ids)[0]):
            self.store.prefetch(self.manifest.shards[int(shard)])

    def reader(self, shard: int) -> TarShard | MdsShard:
        cached = self._open.get(shard)
        if cached is None:
            try:
                cached = self._open_shard(shard)
            except (
                DataError
            ) as e:  # remembered so that a skip policy does not re-open it per sample
                cached = e
            self._open[shard] = cached
            while len(self._open) > self.max_open:
                _, old = self._open.popitem(last=False)
                if not isinstance(old, Exception):
                    old.close()
        else:
            self._open.move_to_end(shard)
        if isinstance(cached, Exception):
            raise cached
        return cached

    def _open_shard(self, shard: int) -> TarShard | MdsShard:
        info = self.manifest.shards[shard]
        for attempt in range(3):
            try:
                # inside the retry: re-hashing a cached copy reads it, and another worker may
                # evict it between the fetch and that read
                path = self.store.local_path(info)
                if self.fmt == "wds":
                    return TarShard(
                        path,
                        info.name,
                        expected_samples=info.samples,
                        check_headers=not self.store.verified(info),
                    )
                if info.compression:
                    path = _decompress(path, info, self.store.cache_dir, self.store.local)
                return MdsShard(
                    path, info.name, self.manifest.columns, expected_samples=info.samples
                )
            except (ShardNotFoundError, FileNotFoundError):
                # a cached copy evicted by another process between fetch and open: fetch again
                if self.store.local or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def read(self, sample_id: int) -> tuple[str, str, RawSample]:
        """(shard name, sample key, raw fields) of a canonical sample id."""
        shards, index = self.order.locate(np.asarray([sample_id]))
        return self.read_at(int(shards[0]), int(index[0]))

    def read_at(self, shard: int, index: int) -> tuple[str, str, RawSample]:
        """The same for sample `index` of shard `shard` (callers locate ids in bulk)."""
        reader = self.reader(shard)
        return reader.name, reader.key(index), reader.read(index)
