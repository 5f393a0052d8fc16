"""Where shard bytes come from: local paths in place, any other fsspec URL through a local cache.

Remote shards are downloaded whole into `cache_dir` (written aside, verified against every hash
the manifest declares, then renamed into place, under a file lock so ranks and workers sharing a
cache download each shard once), and read from there with random access. A later epoch reads from
the cache. A cached file is named by the shard's content identity (a declared hash, else size and
etag/mtime from the server), never by the URL as typed: a dataset rewritten in place is fetched
again, and two datasets whose shards share a relative name never read each other's bytes.
With a size limit, least recently used shards are evicted; a reader holding one open keeps its
file descriptor (POSIX), so eviction never breaks a read in progress.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import fsspec

from data_pipeline.errors import ChecksumError, ShardNotFoundError, where
from data_pipeline.hashes import checkable, digest_file
from data_pipeline.manifest import ShardInfo
from data_pipeline.safe_names import relative_name

log = logging.getLogger(__name__)

VERIFY_MODES = ("off", "download", "always")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pretrain", "shards")


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` in one step (a reader sees the old file or the new one); the
    scratch name is per process, so ranks writing the same file do not trip over each other."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def expand_options(flat: dict) -> dict:
    """Recipe-friendly flat options -> fsspec kwargs: dotted keys nest
    ({"client_kwargs.endpoint_url": URL} -> {"client_kwargs": {"endpoint_url": URL}}), and the
    strings true/false become booleans."""
    out: dict = {}
    for key, value in flat.items():
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def open_fs(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path) for a dataset URL or local path."""
    fs, root = fsspec.core.url_to_fs(url, **expand_options(storage_options or {}))
    return fs, root.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


class ShardStore:
    """Maps a shard of one dataset to a readable local file path."""

    def __init__(self, url: str, storage_options: dict | None = None, cache_dir: str = "",
                 verify: str = "download", cache_limit_bytes: int = 0, prefetch_threads: int = 2):
        if verify not in VERIFY_MODES:
            raise ValueError(f"data.verify_checksums={verify!r}: choose one of {VERIFY_MODES}")
        self.url, self.storage_options = url, dict(storage_options or {})
        self.fs, self.root = open_fs(url, self.storage_options)
        self.local = is_local(self.fs)
        self.verify, self.cache_limit_bytes = verify, cache_limit_bytes
        self.cache_dir = cache_dir or default_cache_dir()
        self.prefetch_threads = prefetch_threads
        self._verified: dict[str, tuple[str, ...]] = {}  # shard name -> hashes checked
        self._pending: dict[str, Future] = {}
        self._keys: dict[str, str] = {}  # shard name -> content key (cached per process)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.downloads = 0  # shards fetched by this process (tests, metrics)

    def _in_this_process(self) -> None:
        """After a fork (DataLoader workers) the parent's prefetch threads do not exist here."""
        if self._pid != os.getpid():
            self._pid, self._pool, self._pending = os.getpid(), None, {}
            self._lock, self.downloads = threading.Lock(), 0
            # async filesystems (http, s3) refuse to run on a loop inherited through fork
            self.fs = open_fs(self.url, self.storage_options)[0]

    def __getstate__(self) -> dict:
        # DataLoader workers get a copy without threads; each process builds its own pool.
        state = self.__dict__.copy()
        state.update(_pending={}, _pool=None, _lock=None, downloads=0, _pid=-1)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def verified(self, shard: ShardInfo) -> bool:
        """Whether this process checked the shard's bytes against at least one declared hash
        (always true for a shard in the remote cache, which is only filled after a check)."""
        if self.verify == "off" or not any(map(checkable, shard.declared_hashes())):
            return False
        return not self.local or shard.name in self._verified

    def checked_hashes(self, shard: ShardInfo) -> tuple[str, ...]:
        """The hashes this process compared for the shard (empty: nothing was verified)."""
        return self._verified.get(shard.name, ())

    def remote_path(self, name: str) -> str:
        return f"{self.root}/{relative_name(name, f'shard name under {self.url}')}"

    def read_small(self, name: str) -> bytes | None:
        """A small metadata file (manifest, index), or None if it does not exist."""
        self._in_this_process()
        path = self.remote_path(name)
        try:
            with self.fs.open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def local_path(self, shard: ShardInfo) -> str:
        """A local file with the shard's bytes (downloaded and verified if remote)."""
        self._in_this_process()
        if self.local:
            path = self.remote_path(shard.name)
            if not os.path.exists(path):
                raise ShardNotFoundError(f"{where(shard.name)}: not found at {path}")
            if self.verify == "always" and shard.name not in self._verified:
                self._check(path, shard)
            return path
        with self._lock:
            future = self._pending.pop(shard.name, None)
        path = future.result() if future is not None else self._fetch(shard)
        if self.verify == "always" and shard.name not in self._verified:
            self._check(path, shard)  # a copy cached earlier (maybe by a run with checks off)
        return path

    def prefetch(self, shard: ShardInfo) -> None:
        """Start downloading a shard in the background (no-op for local datasets)."""
        if self.local:
            return
        self._in_this_process()
        with self._lock:
            if shard.name in self._pending or os.path.exists(self._cache_path(shard)):
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.prefetch_threads,
                                                thread_name_prefix="prefetch")
            self._pending[shard.name] = self._pool.submit(self._fetch, shard)

    def content_key(self, shard: ShardInfo) -> str:
        """The shard's content identity: its declared hashes, else the server's size and
        etag/mtime (asked once per shard), so a rewritten source never matches an old key."""
        declared = shard.declared_hashes()
        if declared:
            text = ",".join(f"{a}={h}" for a, h in sorted(declared.items()))
        else:
            info = self.fs.info(self.remote_path(shard.name))
            stamp = [info.get(k) for k in ("size", "ETag", "etag", "mtime", "LastModified")]
            text = f"{self.url}|{shard.name}|{shard.bytes}|{stamp}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _cache_path(self, shard: ShardInfo) -> str:
        if shard.name not in self._keys:
            self._keys[shard.name] = self.content_key(shard)
        base = os.path.basename(relative_name(shard.name, f"shard name under {self.url}"))
        return os.path.join(self.cache_dir, f"{self._keys[shard.name]}-{base}")

    def _check(self, path: str, shard: ShardInfo) -> None:
        """Compare the file with every declared hash this process can compute."""
        declared = shard.declared_hashes()
        actual = digest_file(path, declared)
        for algo, digest in actual.items():
            if digest != str(declared[algo]).lower():
                raise ChecksumError(
                    f"{where(shard.name)}: {algo} {digest} does not match the manifest's"
                    f" {declared[algo]} ({path})"
                )
        if actual:
            self._verified[shard.name] = tuple(sorted(actual))

    def _fetch(self, shard: ShardInfo) -> str:
        dest = self._cache_path(shard)
        try:
            os.utime(dest)  # cached: refresh the LRU clock for eviction
            return dest
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.path.exists(dest):  # another process fetched it while we waited
                    return dest
                self._download(shard, dest)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._evict(keep=dest)
        return dest

    def _download(self, shard: ShardInfo, dest: str) -> None:
        src = self.remote_path(shard.name)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".part-")
        os.close(fd)
        try:
            start = time.perf_counter()
            try:
                self.fs.get_file(src, tmp)
            except FileNotFoundError as e:
                raise ShardNotFoundError(f"{where(shard.name)}: not found at {self.url}") from e
            if shard.bytes >= 0 and os.path.getsize(tmp) != shard.bytes:
                raise ChecksumError(
                    f"{where(shard.name)}: downloaded {os.path.getsize(tmp)} bytes, manifest says"
                    f" {shard.bytes} ({src})"
                )
            if self.verify != "off":
                self._check(tmp, shard)
            os.replace(tmp, dest)
            self.downloads += 1
            log.debug("fetched %s in %.2fs", src, time.perf_counter() - start)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _evict(self, keep: str) -> None:
        if self.cache_limit_bytes <= 0:
            return
        entries = []
        for name in os.listdir(self.cache_dir):
            path = os.path.join(self.cache_dir, name)
            if name.startswith(".part-") or name.endswith(".lock") or path == keep:
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if not os.path.isfile(path):  # the decompressed-MDS folder, not a cached shard
                continue
            entries.append((st.st_mtime, st.st_size, path))
        try:
            kept = os.path.getsize(keep)
        except FileNotFoundError:  # another process already evicted it; the reader refetches
            kept = 0
        total = sum(size for _, size, _ in entries) + kept
        for _, size, path in sorted(entries):
            if total <= self.cache_limit_bytes:
                break
            try:
                os.unlink(path)
                total -= size
            except FileNotFoundError:
                pass
