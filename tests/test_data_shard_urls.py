"""Shard URLs as webdataset users write them: brace ranges, globs and `::` lists, local and over
the loopback S3 server, read the same samples as the dataset directory."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from data_pipeline import DataConfig, build_loader
from data_pipeline.shard_urls import expand_braces, split_shard_spec
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import write_splits
from tests.test_data_remote import moto_s3  # noqa: F401 - the loopback S3 server fixture

N, PER_SHARD = 48, 8


@pytest.fixture(scope="module")
def wds_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("urls")
    samples, meta = synthetic_images(N, size=4, channels=3, seed=3)
    write_splits(samples, str(root / "ds"), "wds", samples_per_shard=PER_SHARD, meta=meta)
    return str(root / "ds" / "train")


def read_all(url: str, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one epoch in canonical order."""
    cfg = DataConfig(format="wds", train_url=url, shuffle=False, global_batch_size=PER_SHARD,
                     **kw)
    loader = build_loader(cfg, 0, 1)
    count = loader.source.num_samples // PER_SHARD
    batches = [b for b, _ in zip(loader, range(count))]
    return (np.concatenate([b["image"].numpy() for b in batches]),
            np.concatenate([b["label"].numpy() for b in batches]))


def test_expand_braces():
    assert expand_braces("s-{000..003}.tar") == [f"s-{i:03d}.tar" for i in range(4)]
    assert expand_braces("{a,b}/x-{8..10}") == ["a/x-8", "a/x-9", "a/x-10", "b/x-8", "b/x-9",
                                                "b/x-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert split_shard_spec("s3://b/ds/train") == ("s3://b/ds/train", None)
    assert split_shard_spec("s3://b/ds/s-{0..1}.tar::s3://b/ds/t.tar") == (
        "s3://b/ds", ["s-0.tar", "s-1.tar", "t.tar"])
    with pytest.raises(ValueError, match="share one directory"):
        split_shard_spec("s3://b/a/x.tar::s3://b/c/y.tar")


def test_patterns_globs_and_lists_read_the_directory_samples(wds_dir, tmp_path):
    images, labels = read_all(wds_dir)
    shards = sorted(f for f in os.listdir(wds_dir) if f.endswith(".tar"))
    assert len(shards) == N // PER_SHARD
    for url in (f"{wds_dir}/shard-{{000000..{len(shards) - 1:06d}}}.tar", f"{wds_dir}/*.tar",
                "::".join(f"{wds_dir}/{s}" for s in shards)):
        got_images, got_labels = read_all(url)
        assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels), url
    # a subset of the shards: exactly those samples
    sub_images, _ = read_all(f"{wds_dir}/shard-{{000001..000002}}.tar")
    assert np.array_equal(sub_images, images[PER_SHARD:3 * PER_SHARD])
    # foreign shards without a manifest: the named shards are scanned
    foreign = tmp_path / "foreign"
    shutil.copytree(wds_dir, foreign)
    os.remove(foreign / "manifest.json")
    got_images, _ = read_all(f"{foreign}/shard-{{000000..000005}}.tar")
    assert np.array_equal(got_images, images)
    with pytest.raises(Exception, match="shard-000006.tar is not in the dataset"):
        read_all(f"{wds_dir}/shard-{{000005..000009}}.tar")


def test_brace_urls_over_s3_read_the_local_samples(wds_dir, tmp_path, moto_s3):  # noqa: F811
    import fsspec

    endpoint, _ = moto_s3
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("url-data")
    fs.put(wds_dir, "url-data/ds/train", recursive=True)
    opts = {"client_kwargs.endpoint_url": endpoint}
    images, labels = read_all(wds_dir)
    for url in ("s3://url-data/ds/train/shard-{000000..000005}.tar",
                "s3://url-data/ds/train/*.tar"):
        got_images, got_labels = read_all(url, storage_options=opts,
                                          cache_dir=str(tmp_path / "cache"))
        assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels), url


def test_scanned_counts_are_remembered_per_content(wds_dir, tmp_path, caplog):
    """Foreign shards without a manifest are counted once per content (size + mtime/etag): a
    second read scans nothing, a rewritten shard is counted again, a tampered memo is ignored."""
    foreign, cache = tmp_path / "foreign", tmp_path / "cache"
    shutil.copytree(wds_dir, foreign)
    os.remove(foreign / "manifest.json")
    url = f"{foreign}/shard-{{000000..000005}}.tar"
    images, _ = read_all(wds_dir)

    def scanned(**kw) -> tuple[str, np.ndarray]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="data_pipeline"):
            got, _ = read_all(url, cache_dir=str(cache), **kw)
        return " ".join(r.getMessage() for r in caplog.records if "scanning" in r.getMessage()), got

    first, got = scanned()
    assert "scanning 6 of its 6 shards" in first and np.array_equal(got, images)
    second, got = scanned()
    assert second == "" and np.array_equal(got, images)
    # shard 5 rewritten with shard 4's samples (same size, new mtime): counted again, new pixels
    shutil.copyfile(foreign / "shard-000004.tar", foreign / "shard-000005.tar")
    os.utime(foreign / "shard-000005.tar", (1, 1))
    third, got = scanned()
    assert "scanning 1 of its 6 shards" in third
    assert np.array_equal(got[5 * PER_SHARD:], images[4 * PER_SHARD:5 * PER_SHARD])
    # a memo that is not exactly what we write is not trusted
    for memo in (cache / "counts").iterdir():
        memo.write_text('{"samples": -3, "bytes": 10}')
    fourth, got = scanned()
    assert "scanning 6 of its 6 shards" in fourth
