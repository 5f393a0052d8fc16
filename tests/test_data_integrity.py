"""What a reader trusts is checked at open: sample counts, every declared hash (sha256, sha1,
xxh64), and caches are keyed by content, so data rewritten in place is read anew."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import REPO

from data_pipeline import DataConfig
from data_pipeline._compat import import_streaming
from data_pipeline.errors import ChecksumError, CorruptShardError
from data_pipeline.source import ShardedSource
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits

N = 24


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("integrity")
    out = {}
    for fmt in ("wds", "mds"):
        samples, meta = synthetic_images(N, size=4, channels=3, seed=3)
        write_splits(samples, str(root / fmt), fmt, samples_per_shard=8, meta=meta)
        out[fmt] = str(root / fmt / "train")
    return out


def _copy(pristine: dict[str, str], fmt: str, dest) -> str:
    shutil.copytree(pristine[fmt], dest)
    return str(dest)


def _edit(path: str, name: str, change) -> None:
    with open(os.path.join(path, name)) as f:
        doc = json.load(f)
    change(doc)
    with open(os.path.join(path, name), "w") as f:
        json.dump(doc, f)


def _open(path: str, fmt: str, **kw) -> ShardedSource:
    cfg = DataConfig(format=fmt, cache_dir=os.path.join(path, ".cache"), **kw)
    src = ShardedSource(path, fmt, cfg, shuffle=False)
    for i in range(len(src.manifest.shards)):
        src.reader(i)
    return src


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("count", [0, -3, 2.5, True, "8"])
@pytest.mark.parametrize(("fmt", "listing"), [("wds", "manifest.json"), ("mds", "index.json")])
def test_non_positive_or_non_integer_counts_are_refused(pristine, tmp_path, fmt, listing, count):
    path = _copy(pristine, fmt, tmp_path / fmt)

    def change(doc):
        doc["shards"][1]["samples"] = count

    _edit(path, listing, change)
    if fmt == "mds":
        os.unlink(os.path.join(path, "manifest.json"))  # the index alone (a foreign MDS set)
    with pytest.raises(CorruptShardError) as e:
        _open(path, fmt)
    name = "shard-000001.tar" if fmt == "wds" else "shard.00001.mds"
    assert name in _one_line(e) and "positive integer" in str(e.value)


def test_wrong_sha256_in_an_mds_manifest_is_an_error(pristine, tmp_path):
    path = _copy(pristine, "mds", tmp_path / "mds")

    def change(doc):
        doc["shards"][2]["sha256"] = "0" * 64

    _edit(path, "manifest.json", change)
    with pytest.raises(CorruptShardError) as e:
        _open(path, "mds")
    assert "shard.00002.mds" in _one_line(e) and "sha256" in str(e.value)


def _streaming_set(path: str, hashes: list[str], compression: str | None = None,
                   labels: np.ndarray | None = None) -> np.ndarray:
    streaming = import_streaming()
    labels = np.arange(N) if labels is None else labels
    columns = {"x": "ndarray:float32", "label": "int"}
    with streaming.MDSWriter(out=path, columns=columns, size_limit=600, hashes=hashes,
                             compression=compression, exist_ok=True) as out:
        for i in range(N):
            out.write({"x": np.full(16, i, np.float32), "label": int(labels[i])})
    return labels


def _flip_a_byte(path: str, name: str) -> None:
    full = os.path.join(path, name)
    with open(full, "r+b") as f:
        f.seek(os.path.getsize(full) - 5)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("algo", ["sha1", "xxh64"])
def test_corrupt_shard_in_a_set_hashed_without_sha256_is_named(tmp_path, algo):
    """streaming writes whichever hashes it is asked for; sha1 or xxh64 alone are checked too."""
    path = str(tmp_path / "set")
    _streaming_set(path, [algo])
    _open(path, "mds")  # pristine: every shard passes
    _flip_a_byte(path, "shard.00001.mds")
    with pytest.raises(ChecksumError) as e:
        _open(path, "mds")
    assert "shard.00001.mds" in _one_line(e) and algo in str(e.value)


def _inspect(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrain", "data", "inspect", path, "--verify",
                           "--samples", "0", "--cache-dir", os.path.join(path, ".cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_inspect_verify_names_the_hash_and_fails_when_it_could_check_nothing(tmp_path):
    sha1 = str(tmp_path / "sha1")
    _streaming_set(sha1, ["sha1", "xxh64"])
    out = _inspect(sha1)
    assert out.returncode == 0, out.stderr
    assert "(sha1, xxh64 checked)" in out.stdout
    _flip_a_byte(sha1, "shard.00000.mds")
    out = _inspect(sha1)
    assert out.returncode == 1 and "shard.00000.mds" in out.stderr and "BAD" in out.stderr
    bare = str(tmp_path / "bare")
    _streaming_set(bare, [])
    out = _inspect(bare)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "verified 0/" in out.stdout and "no hash checked" in out.stdout


def _labels(path: str, cache: str) -> list[int]:
    from data_pipeline.decode import decode_field

    cfg = DataConfig(format="mds", cache_dir=cache)
    src = ShardedSource(path, "mds", cfg, shuffle=False)
    return [int(decode_field(*src.read(i)[2]["label"])) for i in range(src.num_samples)]


@pytest.mark.parametrize("hashes", [[], ["sha1"]])
def test_zstd_mds_set_rewritten_in_place_is_read_anew(tmp_path, hashes):
    path, cache = str(tmp_path / "set"), str(tmp_path / "cache")
    first = _streaming_set(path, hashes, compression="zstd")
    assert _labels(path, cache) == first.tolist()
    shutil.rmtree(path)  # same names, same sizes, other labels
    second = _streaming_set(path, hashes, compression="zstd", labels=np.arange(N)[::-1] + 100)
    assert _labels(path, cache) == second.tolist()


def test_remote_dataset_rewritten_in_place_is_fetched_again(pristine, tmp_path):
    """The shard cache is keyed by content (the manifest's hashes), not by the URL typed."""
    served = tmp_path / "served"
    handler = type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                   {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ds"
    cache = str(tmp_path / "cache")
    try:
        reads = []
        for seed in (1, 2):
            shutil.rmtree(served, ignore_errors=True)
            samples, meta = synthetic_images(N, size=4, channels=3, seed=seed)
            write_splits(samples, str(served), "wds", samples_per_shard=8, meta=meta)
            os.rename(served / "train", served / "ds")
            remote = ShardedSource(url, "wds", DataConfig(format="wds", cache_dir=cache),
                                   shuffle=False)
            local = ShardedSource(str(served / "ds"), "wds", DataConfig(format="wds"),
                                  shuffle=False)
            got = [remote.read(i)[2] for i in range(remote.num_samples)]
            assert got == [local.read(i)[2] for i in range(local.num_samples)], seed
            reads.append(got)
    finally:
        server.shutdown()
        server.server_close()
    assert reads[0] != reads[1]
