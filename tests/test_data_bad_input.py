"""Bad input gives an error naming the shard (and sample key); the opt-in skip policy counts."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from data_pipeline import DataConfig, build_loader
from data_pipeline._compat import import_streaming
from data_pipeline.errors import (
    BadSampleError,
    ChecksumError,
    CorruptShardError,
    ShardNotFoundError,
    UnsafeEncodingError,
)
from data_pipeline.sources import synthetic_images
from data_pipeline.writers import WdsWriter, write_splits

os.environ.setdefault("OMP_NUM_THREADS", "1")
N = 40


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pristine")
    out = {}
    for fmt in ("wds", "mds"):
        samples, meta = synthetic_images(N, size=4, channels=3, seed=3)
        write_splits(samples, str(root / fmt), fmt, samples_per_shard=10, meta=meta)
        out[fmt] = str(root / fmt / "train")
    return out


@pytest.fixture
def copy(pristine, tmp_path):
    def make(fmt: str) -> str:
        dest = str(tmp_path / fmt)
        shutil.copytree(pristine[fmt], dest)
        return dest
    return make


def epoch(path: str, fmt: str, **kw) -> tuple[list, object]:
    cfg = DataConfig(format=fmt, train_url=path, global_batch_size=8, num_workers=2, **kw)
    loader = build_loader(cfg, 0, 1)
    it = iter(loader)
    return [next(it) for _ in range(N // 8)], loader


def second_shard(path: str, fmt: str) -> str:
    return "shard-000001.tar" if fmt == "wds" else "shard.00001.mds"


@pytest.mark.parametrize("fmt,cut", [("wds", 0.22), ("wds", 0.34), ("mds", 0.5)])
def test_truncated_shard_is_named(copy, fmt, cut):
    """Cut inside a member's data, inside a header (tar), inside the samples (MDS)."""
    path = copy(fmt)
    name = second_shard(path, fmt)
    full = os.path.join(path, name)
    with open(full, "r+b") as f:
        f.truncate(int(os.path.getsize(full) * cut))
    with pytest.raises(CorruptShardError, match=name.replace(".", r"\.")):
        epoch(path, fmt, verify_checksums="off")
    # with checksums on (the default) the same damage is caught as a mismatch, also named
    with pytest.raises(ChecksumError, match=name.replace(".", r"\.")):
        epoch(path, fmt)


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_checksum_mismatch_is_named(copy, fmt):
    path = copy(fmt)
    name = second_shard(path, fmt)
    full = os.path.join(path, name)
    with open(full, "r+b") as f:
        f.seek(os.path.getsize(full) - 3)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError, match=rf"{name.replace('.', '[.]')}.*sha256"):
        epoch(path, fmt)


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_missing_shard_is_named(copy, fmt):
    path = copy(fmt)
    name = second_shard(path, fmt)
    os.unlink(os.path.join(path, name))
    with pytest.raises(ShardNotFoundError, match=name.replace(".", r"\.")):
        epoch(path, fmt, on_bad_sample="skip")  # never skipped


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
        out, "PNG"
    )
    return out.getvalue()


def test_undecodable_sample_names_shard_and_key_and_skip_counts(tmp_path):
    writer = WdsWriter(str(tmp_path), samples_per_shard=10)
    for i in range(N):
        writer.write({"png": png(i) if i != 13 else b"\x89PNG not really", "label": i % 10})
    writer.finish()
    with pytest.raises(BadSampleError, match=r"shard-000001\.tar.*sample '000000013'"):
        epoch(str(tmp_path), "wds")
    batches, loader = epoch(str(tmp_path), "wds", on_bad_sample="skip")
    ids = np.concatenate([b["sample_id"].numpy() for b in batches])
    assert (ids == -1).sum() == 1 and sorted(ids[ids >= 0].tolist()) == [
        i for i in range(N) if i != 13
    ]
    labels = np.concatenate([b["label"].numpy() for b in batches])
    assert labels[ids == -1].tolist() == [-100]
    assert loader.metrics()["data/bad_samples"] == 1
    assert loader.state_dict()["bad_samples"] == 1


def test_wrong_shape_sample_is_named(tmp_path):
    writer = WdsWriter(str(tmp_path), samples_per_shard=10)
    for i in range(N):
        image = np.zeros((4, 4, 3) if i != 27 else (5, 4, 3), np.uint8)
        writer.write({"image": image, "label": 1})
    writer.finish()
    with pytest.raises(BadSampleError, match=r"shard-000002\.tar.*'000000027'.*shape"):
        epoch(str(tmp_path), "wds")


def test_mds_pickle_column_is_refused(tmp_path):
    streaming = import_streaming()
    with streaming.MDSWriter(out=str(tmp_path), columns={"image": "png", "label": "pkl"}) as out:
        for i in range(4):
            out.write({"image": Image.fromarray(np.zeros((4, 4), np.uint8)), "label": i})
    with pytest.raises(UnsafeEncodingError, match="'label'.*pkl"):
        epoch(str(tmp_path), "mds")


def test_pickle_field_in_tar_is_refused():
    from data_pipeline.decode import decode_field

    with pytest.raises(UnsafeEncodingError):
        decode_field("pyd", b"\x80\x04K\x01.")
    with pytest.raises(ValueError):  # npy with object arrays needs pickle: np.load refuses
        decode_field("npy", _object_npy())


def _object_npy() -> bytes:
    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return out.getvalue()


def test_format_mismatch_and_empty_url(pristine):
    with pytest.raises(ValueError, match="holds wds shards"):
        epoch(pristine["wds"], "mds")
    with pytest.raises(ValueError, match="train_url"):
        build_loader(DataConfig(format="wds"), 0, 1)
