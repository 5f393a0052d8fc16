"""NaViT patch packing: variable-resolution images packed into fixed-length patch sequences."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_pipeline import IGNORE_INDEX, DataConfig, build_loader
from data_pipeline.navit import attention_mask, fit_scale, patch_grid
from data_pipeline.writers import WdsWriter

os.environ.setdefault("OMP_NUM_THREADS", "1")
N, P, K, S = 36, 4, 3, 40


@pytest.fixture(scope="module")
def varres(tmp_path_factory):
    root = tmp_path_factory.mktemp("varres")
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 255, (int(rng.integers(4, 30)), int(rng.integers(4, 30)), 3), np.uint8)
        for _ in range(N)
    ]
    writer = WdsWriter(str(root), samples_per_shard=10)
    for i, img in enumerate(images):
        writer.write({"image": img, "label": i % 7})
    writer.finish()
    return str(root), images


def cfg(root: str, **kw) -> DataConfig:
    return DataConfig(
        format="wds",
        train_url=root,
        global_batch_size=12,
        num_workers=2,
        patch_pack=True,
        patch_size=P,
        pack_images=K,
        pack_max_patches=S,
        **kw,
    )


def test_fit_scale_fits():
    sizes = [(30, 29), (25, 8), (4, 4)]
    scale = fit_scale(sizes, P, S)
    assert sum(np.prod(patch_grid(h, w, P, scale)) for h, w in sizes) <= S
    assert fit_scale([(8, 8)], P, S) == 1.0


def test_packed_batches_reconstruct_images_and_cover_epoch(varres):
    root, images = varres
    seen = []
    for rank in range(2):
        it = iter(build_loader(cfg(root), rank, 2))
        for _ in range(N // 12):
            b = next(it)
            assert b["patches"].shape == (2, S, 3 * P * P) and b["image_ids"].shape == (2, S)
            assert b["label"].shape == b["sample_id"].shape == (6,)
            for q in range(2):
                ids = b["image_ids"][q].numpy()
                slots = b["sample_id"][q * K : (q + 1) * K].tolist()
                sizes = [images[s].shape[:2] for s in slots]
                scale = fit_scale(sizes, P, S)
                for slot, sid in enumerate(slots):
                    gr, gc = patch_grid(*images[sid].shape[:2], P, scale)
                    mine = ids == slot
                    assert mine.sum() == gr * gc
                    pos = b["patch_pos"][q][mine].numpy()
                    assert pos[:, 0].max() == gr - 1 and pos[:, 1].max() == gc - 1
                    assert b["label"][q * K + slot] == sid % 7
                    if gr * P == images[sid].shape[0] and gc * P == images[sid].shape[1]:
                        # no resize: the patches are exactly the normalised pixels
                        patches = b["patches"][q][mine].numpy().reshape(gr, gc, 3, P, P)
                        pixels = patches.transpose(0, 3, 1, 4, 2).reshape(gr * P, gc * P, 3)
                        np.testing.assert_allclose(pixels, images[sid] / 127.5 - 1, atol=1e-5)
                assert np.all(ids[(ids >= 0).sum() :] == -1)  # padding at the end
            seen.extend(b["sample_id"].tolist())
    assert sorted(seen) == list(range(N))


def test_attention_mask_is_block_diagonal():
    ids = np.array([[0, 0, 1, 1, 1, -1]])
    m = attention_mask(ids)[0]
    assert m[0, 1] and m[2, 4] and not m[1, 2] and not m[5, 5] and not m[0, 5]


def test_skipped_image_leaves_an_empty_slot(tmp_path):
    writer = WdsWriter(str(tmp_path), samples_per_shard=10)
    for i in range(12):
        data = b"broken" if i == 4 else _png(8 + i, 8)
        writer.write({"png": data, "label": 1})
    writer.finish()
    b = next(iter(build_loader(cfg(str(tmp_path), on_bad_sample="skip"), 0, 1)))
    bad = int(np.flatnonzero(b["sample_id"].numpy() == -1)[0])
    assert b["label"][bad] == IGNORE_INDEX
    assert not np.any(b["image_ids"][bad // K].numpy() == bad % K)


def _png(w: int, h: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()
