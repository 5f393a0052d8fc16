"""data.decode_device=cuda: workers make the CPU path's draws and hand over JPEG bytes; the
device decodes and replays the ops in torch. Here the device is the CPU and the decoder PIL
(torchvision cannot load on this machine), so everything but the nvJPEG call is exercised:
the draws are the CPU path's, the pixels match the PIL path within one uint8 level (three with
colour jitter, which scales a one-level difference), labels and soft labels are
bitwise equal, a resume is bitwise, and what the GPU path cannot do is refused at config load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from bench.gpu_decode_check import per_image_finish
from data_pipeline import DataConfig, build_loader, pixel_ops
from data_pipeline.augment import (
    TAG_CROP,
    TAG_ERASE,
    TAG_FLIP,
    TAG_JITTER,
    jitter_draws,
    random_resized_crop_box,
    sample_rng,
)
from data_pipeline.device_decode import DeferredImageRows
from data_pipeline.errors import DataError
from data_pipeline.sharded import ShardedBatches
from data_pipeline.sources import image_folder
from data_pipeline.stream import SourceEvalLoader, SourceTrainLoader
from data_pipeline.writers import write_splits
from pretrain.config import ConfigError, load_config
from tests.test_vision_resume import jpeg_folder

CPU = torch.device("cpu")
ENHANCE = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
STD = [0.229, 0.224, 0.225]
BASE = dict(image_mode="RGB", image_size=24, random_resized_crop=True, crop_scale=[0.3, 1.0],
            random_flip=True, eval_crop_fraction=0.875, jpeg_draft=False,
            image_mean=[0.485, 0.456, 0.406], image_std=STD)
FULL = dict(BASE, color_jitter=0.3, random_erasing=0.5, erase_count=2, mixup_alpha=0.8,
            cutmix_alpha=1.0, label_smoothing=0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("device_decode")
    samples, meta = image_folder(jpeg_folder(str(root / "folder")), 0.2)
    write_splits(samples, str(root / "wds"), "wds", samples_per_shard=10, meta=meta)
    return str(root / "wds")


def cfg_for(root: str, **kw) -> DataConfig:
    return DataConfig(format="wds", train_url=f"{root}/train", val_url=f"{root}/val",
                      global_batch_size=12, shuffle_window=2, seed=3, num_workers=0, **kw)


def device_loader(cfg: DataConfig, rank: int = 0, world: int = 1, split: str = "train"):
    """The loader of data.decode_device=cuda, with the device step on the CPU."""
    dcfg = replace(cfg, decode_device="cuda")
    source = ShardedBatches(dcfg, train=split == "train", finish_device=CPU)
    if split == "train":
        return SourceTrainLoader(source, dcfg, rank, world)
    return SourceEvalLoader(source, dcfg, rank, world)


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised images in uint8 levels (per channel std)."""
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((a - b).abs() * 255 * std).round(decimals=3)


def pil_resize(arr: np.ndarray, box: tuple, size: int) -> np.ndarray:
    image = Image.fromarray(arr).resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(image).transpose(2, 0, 1)


def test_pixel_ops_replay_pils_arithmetic():
    """Each resize pass, RGB -> L and the enhance ops are bitwise PIL's; a crop that needs both
    passes differs by at most one level where Pillow 13 runs the vertical pass first (its order
    rule is not in its C source as of 2026-08; ours is horizontal first). torch's own
    antialiased bilinear is further: measured max 5 levels, 80% equal on 224 px crops."""
    rng = np.random.default_rng(0)
    both = []
    for _ in range(40):
        width, height = (int(v) for v in rng.integers(30, 300, 2))
        arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        chw = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        size = int(rng.integers(8, min(width, height, 120)))
        left, top = int(rng.integers(0, width // 2)), float(rng.uniform(0, height / 2))
        right, bottom = int(rng.integers(left + 2, width + 1)), float(rng.uniform(top + 2, height))
        # one pass: the rows stay (horizontal only), or the columns stay (vertical only)
        got = pixel_ops.resize_box(chw[:, :size], (left, 0, right, size), size).numpy()
        assert np.array_equal(got, pil_resize(arr, (left, 0, right, size), size)[:, :size])
        got = pixel_ops.resize_box(chw[:, :, :size], (0, top, size, bottom), size).numpy()
        assert np.array_equal(got, pil_resize(arr, (0, top, size, bottom), size)[:, :, :size])
        got = pixel_ops.resize_box(chw, (left, top, right, bottom), size).numpy()
        both.append(np.abs(got - pil_resize(arr, (left, top, right, bottom), size)).ravel())
        assert np.array_equal(pixel_ops.to_luma(chw.float())[0].numpy(),
                              np.asarray(Image.fromarray(arr).convert("L")))
        factors, order = rng.uniform(0.5, 1.5, 3).tolist(), rng.permutation(3).tolist()
        image = Image.fromarray(arr)
        for index in order:
            image = ENHANCE[index](image).enhance(factors[index])
        got = pixel_ops.color_jitter(chw.float(), factors, order).numpy()
        assert np.array_equal(got, np.asarray(image).transpose(2, 0, 1))
    both = np.concatenate(both)
    assert both.max() <= 1 and (both == 0).mean() > 0.7


def test_the_draws_are_the_cpu_paths(shards):
    cfg = replace(cfg_for(shards, **FULL), decode_device="cuda")
    rows = DeferredImageRows(cfg, 3, 24, 24, train=True)
    cpu_rows = ShardedBatches(cfg_for(shards, **FULL), train=True).rows
    for sample_id in range(40):
        for epoch in (0, 1, 7):
            size = (60 + sample_id, 90 - sample_id)
            got = rows.draws(size, sample_id, epoch)
            box = random_resized_crop_box(*size, (0.3, 1.0), (0.75, 4 / 3),
                                          sample_rng(3, epoch, sample_id, TAG_CROP))
            assert tuple(got["box"]) == box
            assert got["flip"] == (sample_rng(3, epoch, sample_id, TAG_FLIP).random() < 0.5)
            factors, _, order = jitter_draws(0.3, sample_rng(3, epoch, sample_id, TAG_JITTER))
            assert got["jitter"].tolist() == np.float32(factors).tolist()
            assert got["jitter_order"].tolist() == order
            # the CPU path erases an array in place: the same boxes and the same fill
            arr = np.full((3, 24, 24), 7.0, np.float32)
            boxes = cpu_rows.erasing(arr, sample_rng(3, epoch, sample_id, TAG_ERASE))
            assert [b for b, _ in got["erase"]] == boxes
            replayed = np.full((3, 24, 24), 7.0, np.float32)
            for (left, top, right, bottom), fill in got["erase"]:
                replayed[:, top:bottom, left:right] = fill
            assert np.array_equal(replayed, arr)


# one level from the resize (see pixel_ops); colour jitter (0.3) scales it by up to 1.3 per
# enhance op, three ops, each truncating: three levels
def test_batched_resize_is_each_images_resize_bitwise():
    """resize_boxes over a batch (taps zero-padded to each chunk's widest crop) against each
    image resized alone: crops of different spans, an identity box, a one-pass box, and
    chunks forced small."""
    rng = np.random.default_rng(1)
    size, images, boxes = 16, [], []
    for _ in range(9):
        width, height = (int(v) for v in rng.integers(size, 90, 2))
        images.append(torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        left, top = float(rng.uniform(0, width / 2)), float(rng.uniform(0, height / 2))
        boxes.append((left, top, float(rng.uniform(left + 2, width)),
                      float(rng.uniform(top + 2, height))))
    images.append(images[0][:, :size, :size].clone())
    boxes.append((0, 0, size, size))  # nothing to resample
    boxes[1] = (0, boxes[1][1], images[1].shape[2], boxes[1][3])  # vertical pass only
    want = torch.stack([pixel_ops.resize_box(i, b, size) for i, b in zip(images, boxes)])
    for chunk_bytes in (256 << 20, 1):  # one chunk; one image per chunk
        got = pixel_ops.resize_boxes(images, boxes, size, chunk_bytes=chunk_bytes)
        assert torch.equal(got, want)


def test_the_batched_device_step_is_the_per_image_one_bitwise(shards):
    """finish_batch runs each op once over the batch (a 20-40x gap to the CPU workers on an
    H200 was the per-image loop); the pixels are the per-image loop's, bit for bit."""
    cfg = replace(cfg_for(shards, **FULL), decode_device="cuda")
    source = ShardedBatches(cfg, train=True, finish_device=CPU)
    for start in (0, 12, 48):
        batch = source.batch(np.arange(start, start + 12), None)
        want = per_image_finish(batch, source.rows, CPU)
        assert torch.equal(source.finish(batch)["image"], want)


@pytest.mark.parametrize("augment, tolerance", [(BASE, 1.0), (FULL, 3.0)])
def test_pixels_match_the_pil_path_and_labels_are_bitwise(shards, augment, tolerance):
    cfg = cfg_for(shards, **augment)
    diffs = []
    for ref, got in zip(build_loader(cfg, 0, 1), device_loader(cfg)):
        assert set(ref) == set(got)
        for key in ref.keys() - {"image"}:
            assert torch.equal(ref[key], got[key]), key
        diffs.append(levels(ref["image"], got["image"]))
        if len(diffs) == 6:  # 72 samples: past the first epoch (57)
            break
    diff = torch.cat(diffs)
    assert diff.max() <= tolerance, diff.max()
    assert (diff == 0).float().mean() > 0.85  # most pixels are bitwise PIL's
    evals = zip(build_loader(cfg, 0, 1, "val"), device_loader(cfg, split="val"))
    for ref, got in evals:
        assert torch.equal(ref["label"], got["label"])
        assert levels(ref["image"], got["image"]).max() <= 1.0


def global_batches(cfg: DataConfig, world: int, steps: int, state: dict | None = None
                   ) -> list[dict[str, torch.Tensor]]:
    """`steps` global batches of the device-decode loaders, ranks concatenated in order."""
    per_rank = []
    for rank in range(world):
        loader = device_loader(cfg, rank, world)
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
        it = iter(loader)
        per_rank.append([next(it) for _ in range(steps)])
    return [{k: torch.cat([per_rank[r][s][k] for r in range(world)]) for k in per_rank[0][s]}
            for s in range(steps)]


def test_resume_is_bitwise_with_the_device_decode_on_another_world_size(shards):
    """The state is a position; the draws (and so the pixels) follow from it on 3 ranks as on
    the 2 that saved it."""
    cfg = cfg_for(shards, **FULL)
    expected = global_batches(cfg, 2, 6)
    first = device_loader(cfg, 0, 2)
    it = iter(first)
    for _ in range(3):
        next(it)
    for want, got in zip(expected[3:], global_batches(cfg, 3, 3, first.state_dict())):
        for key in want:
            assert torch.equal(want[key], got[key]), key


def test_workers_hand_over_bytes_not_pixels(shards):
    """The worker's batch is the JPEG bytes and the draws; the image only exists after the
    device step (what makes the GPU, not the workers, pay for decoding)."""
    cfg = replace(cfg_for(shards, **FULL), decode_device="cuda")
    source = ShardedBatches(cfg, train=True, finish_device=CPU)
    batch = source.batch(np.arange(12), None)
    assert "image" not in batch and batch["jpeg"].dtype == torch.uint8
    assert batch["jpeg_offsets"][-1] == len(batch["jpeg"])
    assert source.finish(batch)["image"].shape == (12, 3, 24, 24)


def test_a_corrupt_jpeg_is_named_at_the_device_step(shards):
    """The workers read headers only; the decode on the device names the sample it fails on."""
    cfg = replace(cfg_for(shards, **BASE), decode_device="cuda")
    source = ShardedBatches(cfg, train=True, finish_device=CPU)
    batch = source.batch(np.arange(12), None)
    start, end = batch["jpeg_offsets"][5:7].tolist()
    batch["jpeg"][start + (end - start) // 3:end] = 0  # the scan data of row 5 zeroed
    with pytest.raises(DataError, match=rf"^sample id {int(batch['sample_id'][5])}: cannot"
                                        " decode its JPEG on cpu"):
        source.finish(batch)


@pytest.mark.parametrize("override, message", [
    ("data.auto_augment=3aug", "data.auto_augment='3aug' has no GPU version (RandAugment/"
                               "3-Augment are PIL ops): use data.decode_device=cpu"),
    ("data.hue_jitter=0.1", "data.hue_jitter=0.1 has no GPU version (the hue shift is PIL's HSV"
                            " conversion): use data.decode_device=cpu"),
])
def test_config_load_refuses_what_the_gpu_path_would_do_differently(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.format=wds", "data.image_size=24", "data.decode_device=cuda",
                           override])
    assert str(e.value) == message


def test_config_load_refuses_unknown_devices_and_unsized_images():
    with pytest.raises(ConfigError, match="data.decode_device='gpu': choose cpu or cuda"):
        load_config(None, ["data.decode_device=gpu"])
    with pytest.raises(ConfigError, match="needs data.image_size"):
        load_config(None, ["data.format=wds", "data.decode_device=cuda"])
    with pytest.raises(ConfigError, match="decodes JPEG shards"):
        load_config(None, ["data.decode_device=cuda", "data.image_size=8"])


def test_cuda_without_torchvision_is_one_line(shards):
    try:
        import torchvision.io  # noqa: F401

        pytest.skip("torchvision imports here: the message is for machines without it")
    except Exception:
        pass
    cfg = replace(cfg_for(shards, **BASE), decode_device="cuda")
    with pytest.raises(ValueError) as e:
        ShardedBatches(cfg, train=True)
    assert str(e.value).startswith("data.decode_device=cuda needs torchvision"
                                   " (torchvision.io.decode_jpeg)")
    assert "\n" not in str(e.value)
