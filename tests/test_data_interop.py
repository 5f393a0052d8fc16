"""Shards written by the libraries themselves (webdataset's ShardWriter, streaming's MDSWriter)
read correctly by this project's loaders; our MDS shards read by streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipeline import DataConfig, build_loader
from data_pipeline._compat import import_streaming

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8), rng.integers(0, 10, n)


def read_epoch(cfg: DataConfig, n: int) -> dict[int, tuple[np.ndarray, int]]:
    out = {}
    it = iter(build_loader(cfg, 0, 1))
    while len(out) < n:
        b = next(it)
        for row, sid in enumerate(b["sample_id"].tolist()):
            assert sid not in out or len(out) >= n
            out[sid] = (b["image"][row].numpy(), int(b["label"][row]))
    return out


def unnormalise(x: np.ndarray) -> np.ndarray:
    return np.round((x * 0.5 + 0.5) * 255).astype(np.uint8).transpose(1, 2, 0)


def test_webdataset_shardwriter_shards(tmp_path):
    import webdataset as wds

    pix, labels = images(50)
    with wds.ShardWriter(str(tmp_path / "part-%04d.tar"), maxcount=12, verbose=0) as sink:
        for i in range(50):
            sink.write(
                {"__key__": f"s{i:05d}", "png": Image.fromarray(pix[i]), "cls": int(labels[i])}
            )
    cfg = DataConfig(format="wds", train_url=str(tmp_path), global_batch_size=10, num_workers=2)
    got = read_epoch(cfg, 50)  # no manifest: the shards are scanned
    assert sorted(got) == list(range(50))
    for sid, (img, label) in got.items():
        assert label == labels[sid]
        np.testing.assert_array_equal(unnormalise(img), pix[sid])
    # indexing writes a manifest with checksums; reading through it gives the same samples
    cmd = [sys.executable, "-m", "pretrain", "data", "index", str(tmp_path)]
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [12, 12, 12, 12, 2]
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert read_epoch(cfg, 50).keys() == got.keys()


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_streaming_mdswriter_shards(tmp_path, compression):
    streaming = import_streaming()
    pix, labels = images(40, seed=1)
    columns = {"picture": "png", "target": "int", "extra": "ndarray", "note": "json"}
    with streaming.MDSWriter(
        out=str(tmp_path), columns=columns, size_limit=2000, compression=compression
    ) as out:
        for i in range(40):
            out.write(
                {
                    "picture": Image.fromarray(pix[i]),
                    "target": int(labels[i]),
                    "extra": np.arange(i + 1, dtype=np.int16),
                    "note": {"i": i},
                }
            )
    cfg = DataConfig(
        format="mds",
        train_url=str(tmp_path),
        global_batch_size=8,
        num_workers=2,
        image_key="picture",
        label_key="target",
        cache_dir=str(tmp_path / "cache"),
    )
    got = read_epoch(cfg, 40)
    assert sorted(got) == list(range(40))
    for sid, (img, label) in got.items():
        assert label == labels[sid]
        np.testing.assert_array_equal(unnormalise(img), pix[sid])


def test_mds_dynamic_ndarray_and_scalars_decode(tmp_path):
    from data_pipeline.source import ShardedSource

    streaming = import_streaming()
    columns = {
        "a": "ndarray",
        "b": "ndarray:float32",
        "c": "ndarray:uint8:2,3",
        "d": "float64",
        "e": "str_int",
        "f": "str",
        "g": "pil",
    }
    rng = np.random.default_rng(0)
    rows = [
        {
            "a": rng.integers(-9, 9, (i + 1, 2)).astype(np.int64),
            "b": rng.random(i + 2, np.float32),
            "c": rng.integers(0, 255, (2, 3), dtype=np.uint8),
            "d": float(i) / 3,
            "e": i * 7,
            "f": f"doc {i}",
            "g": Image.fromarray(rng.integers(0, 255, (3, 4), dtype=np.uint8)),
        }
        for i in range(5)
    ]
    with streaming.MDSWriter(out=str(tmp_path), columns=columns) as out:
        for row in rows:
            out.write(row)
    from data_pipeline.decode import decode_field

    src = ShardedSource(str(tmp_path), "mds", DataConfig(format="mds"), shuffle=False)
    for i, row in enumerate(rows):
        _, _, raw = src.read(i)
        dec = {k: decode_field(*v) for k, v in raw.items()}
        for k in ("a", "b", "c"):
            np.testing.assert_array_equal(dec[k], row[k])
        assert dec["d"] == row["d"] and dec["e"] == row["e"] and dec["f"] == row["f"]
        np.testing.assert_array_equal(np.asarray(dec["g"]), np.asarray(row["g"]))


def test_our_mds_shards_read_by_streaming(tmp_path):
    from data_pipeline.sources import synthetic_images
    from data_pipeline.writers import write_splits

    streaming = import_streaming()
    samples, meta = synthetic_images(30, size=4, channels=3, seed=2)
    write_splits(samples, str(tmp_path), "mds", samples_per_shard=10, meta=meta)
    ds = streaming.StreamingDataset(local=str(tmp_path / "train"), shuffle=False, batch_size=1)
    try:
        assert len(ds) == 30
        again, _ = synthetic_images(30, size=4, channels=3, seed=2)
        for i, (_, want) in enumerate(again):
            got = ds[i]
            assert got["label"] == want["label"]
            np.testing.assert_array_equal(np.asarray(got["image"]), want["image"])
    finally:
        streaming.base.util.clean_stale_shared_memory()
