"""Streaming shards from a real S3-compatible server (moto, on loopback) and a plain HTTP server,
through the local shard cache: the second epoch is read from the cache."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from data_pipeline import DataConfig, build_loader
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits

os.environ.setdefault("OMP_NUM_THREADS", "1")
N, BATCH = 48, 8


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("remote_src")
    for fmt in ("wds", "mds"):
        samples, meta = synthetic_images(N, size=4, channels=3, seed=5)
        write_splits(samples, str(root / fmt), fmt, samples_per_shard=8, meta=meta)
    return str(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_epochs(cfg: DataConfig, epochs: int, between=None) -> list[np.ndarray]:
    loader = build_loader(cfg, 0, 1)
    it = iter(loader)
    out = []
    for e in range(epochs):
        if e and between:
            between()
        out.append(np.concatenate([next(it)["sample_id"].numpy() for _ in range(N // BATCH)]))
    return out


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    counts: dict[str, int]

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.counts[self.path] = self.counts.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_http_second_epoch_reads_from_cache(local_data, tmp_path, fmt):
    counts: dict[str, int] = {}
    handler = type("H", (CountingHandler,), {"counts": counts})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=local_data))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{fmt}/train"
    cfg = DataConfig(format=fmt, train_url=url, global_batch_size=BATCH, num_workers=2,
                     cache_dir=str(tmp_path / "cache"), shuffle_window=2)
    try:
        first, second = read_epochs(cfg, 2, between=server.shutdown)  # epoch 2: server is gone
    finally:
        server.shutdown()
        server.server_close()
    assert sorted(first.tolist()) == list(range(N)) == sorted(second.tolist())
    assert not np.array_equal(first, second)  # a new permutation, same samples
    shard_gets = {p: c for p, c in counts.items() if p.endswith((".tar", ".mds"))}
    with open(f"{local_data}/{fmt}/train/manifest.json") as f:
        num_shards = len(json.load(f)["shards"])
    assert len(shard_gets) == num_shards and set(shard_gets.values()) == {1}, (
        shard_gets
    )  # once each


@pytest.fixture(scope="module")
def moto_s3():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.3)
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint, proc
    proc.kill()
    proc.wait()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_s3_stream_cache_and_eviction(local_data, tmp_path, moto_s3, capsys):
    import fsspec

    endpoint, proc = moto_s3
    opts = {"client_kwargs.endpoint_url": endpoint}
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("pretrain-data")
    for fmt in ("wds", "mds"):
        fs.put(f"{local_data}/{fmt}/train", f"pretrain-data/{fmt}/train", recursive=True)

    # mds with a cache smaller than the dataset: evictions re-download, the epoch stays exact
    shards = [f for f in os.listdir(f"{local_data}/mds/train") if f.endswith(".mds")]
    biggest = max(os.path.getsize(f"{local_data}/mds/train/{f}") for f in shards)
    small = DataConfig(
        format="mds",
        train_url="s3://pretrain-data/mds/train",
        storage_options=opts,
        global_batch_size=BATCH,
        num_workers=2,
        cache_dir=str(tmp_path / "small"),
        cache_limit_mb=2.5 * biggest / 2**20,
        shuffle_window=1,
    )
    first, second = read_epochs(small, 2)
    assert sorted(first.tolist()) == list(range(N)) == sorted(second.tolist())
    resident = [
        f for _, _, files in os.walk(tmp_path / "small") for f in files if f.endswith(".mds")
    ]
    assert 0 < len(resident) <= 3 < len(shards)

    from pretrain.cli import main

    with pytest.raises(SystemExit) as done:
        main(
            [
                "data",
                "inspect",
                "s3://pretrain-data/wds/train",
                "--verify",
                "--option",
                f"client_kwargs.endpoint_url={endpoint}",
                "--cache-dir",
                str(tmp_path / "inspect"),
            ]
        )
    assert done.value.code == 0
    assert f"{N} samples" in capsys.readouterr().out

    cfg = DataConfig(
        format="wds",
        train_url="s3://pretrain-data/wds/train",
        storage_options=opts,
        global_batch_size=BATCH,
        num_workers=2,
        cache_dir=str(tmp_path / "cache"),
    )

    def stop_server():
        proc.kill()
        proc.wait()

    first, second = read_epochs(cfg, 2, between=stop_server)
    assert sorted(first.tolist()) == list(range(N)) == sorted(second.tolist())
    cached = [f for _, _, files in os.walk(tmp_path / "cache") for f in files if f.endswith(".tar")]
    assert len(cached) == N // 8


def test_cache_limit_evicts_least_recently_used(local_data, tmp_path):
    """A file:// dataset copied through a 'remote' protocol (memory://) with a tiny cache."""
    import fsspec

    mem = fsspec.filesystem("memory")
    for name in os.listdir(f"{local_data}/wds/train"):
        with open(f"{local_data}/wds/train/{name}", "rb") as f:
            mem.pipe(f"/evict/train/{name}", f.read())
    shard = os.path.getsize(f"{local_data}/wds/train/shard-000000.tar")
    from data_pipeline.source import load_manifest
    from data_pipeline.storage import ShardStore

    store = ShardStore(
        "memory://evict/train", cache_dir=str(tmp_path / "c"), cache_limit_bytes=int(2.5 * shard)
    )
    manifest = load_manifest(store, "wds")
    for info in manifest.shards:
        path = store.local_path(info)
        assert os.path.getsize(path) == info.bytes
        resident = [f for f in os.listdir(store.cache_dir) if f.endswith(".tar")]
        assert len(resident) <= 2
    assert store.downloads == len(manifest.shards)
    shutil.rmtree(tmp_path / "c")


def test_file_and_memory_urls(local_data, tmp_path):
    import fsspec

    mem = fsspec.filesystem("memory")
    for name in os.listdir(f"{local_data}/mds/train"):
        with open(f"{local_data}/mds/train/{name}", "rb") as f:
            mem.pipe(f"/urls/train/{name}", f.read())
    for url in (f"file://{local_data}/mds/train", "memory://urls/train"):
        cfg = DataConfig(
            format="mds",
            train_url=url,
            global_batch_size=BATCH,
            num_workers=2,
            cache_dir=str(tmp_path / "cache"),
        )
        (epoch,) = read_epochs(cfg, 1)
        assert sorted(epoch.tolist()) == list(range(N)), url
