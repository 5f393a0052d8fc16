"""Augmented JPEG batches (crop, flip, RandAugment, jitter, mixup/cutmix soft labels) are
bitwise the same after a resume on the same or another world size, and after a SIGKILL of a
training run, for WebDataset and MDS shards."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline import DataConfig, build_loader
from data_pipeline.sources import image_folder
from data_pipeline.writers import write_splits
from pretrain.checkpoint import latest_complete, read_model_tensors
from tests.conftest import kill_run_at_step, run_train, train_cmd

RECIPE = "configs/vit_b16_224.yaml"
GLOBAL_BATCH = 12  # even per-rank micro-batches on 1, 2 and 3 ranks (mixing pairs stay whole)
AUGMENT = dict(image_mode="RGB", image_size=24, random_resized_crop=True, crop_scale=[0.3, 1.0],
               random_flip=True, auto_augment="rand-m9-n2-mstd0.5", color_jitter=0.3,
               hue_jitter=0.1, random_erasing=0.5, erase_count=2, mixup_alpha=0.8,
               cutmix_alpha=1.0, label_smoothing=0.1, eval_crop_fraction=0.875,
               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def jpeg_folder(root: str, classes: int = 3, per_class: int = 24, seed: int = 0) -> str:
    """class subfolders of JPEGs of assorted sizes (some large enough for draft decoding)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(f"{root}/class{c}", exist_ok=True)
        for i in range(per_class):
            width, height = rng.integers(40, 130, 2)
            base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
            image = Image.fromarray(base).resize((int(width), int(height)), Image.BILINEAR)
            image.save(f"{root}/class{c}/{i:03d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("vision")
    folder = jpeg_folder(str(root / "folder"))
    out = {}
    for fmt in ("wds", "mds"):
        samples, meta = image_folder(folder, 0.2)
        write_splits(samples, str(root / fmt), fmt, samples_per_shard=10, meta=meta)
        out[fmt] = str(root / fmt)
    return out


def cfg_for(root: str, fmt: str, **kw) -> DataConfig:
    base = dict(format=fmt, train_url=f"{root}/train", val_url=f"{root}/val",
                global_batch_size=GLOBAL_BATCH, shuffle_window=2, seed=3, num_workers=0, **AUGMENT)
    return DataConfig(**{**base, **kw})


def global_batches(cfg: DataConfig, world: int, steps: int, state: dict | None = None
                   ) -> list[dict[str, torch.Tensor]]:
    """`steps` global batches, each the ranks' micro-batches concatenated in rank order."""
    per_rank = []
    for rank in range(world):
        loader = build_loader(cfg, rank, world)
        if state is not None:
            loader.load_state_dict(json.loads(json.dumps(state)))
        it = iter(loader)
        per_rank.append([next(it) for _ in range(steps)])
    return [{k: torch.cat([per_rank[r][s][k] for r in range(world)])
             for k in per_rank[0][s]} for s in range(steps)]


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_augmented_pixels_and_soft_labels_resume_bitwise_on_any_world_size(shards, fmt):
    cfg = cfg_for(shards[fmt], fmt)
    total, cut = 9, 4  # 57 training samples: crosses into the second epoch
    full = global_batches(cfg, 2, total)
    assert set(full[0]) == {"image", "label", "soft_label", "sample_id"}
    assert full[0]["soft_label"].shape == (GLOBAL_BATCH, 3)
    # some rows mixed (soft label on two classes), none lost mass
    assert torch.allclose(full[0]["soft_label"].sum(1), torch.ones(GLOBAL_BATCH))
    assert any(((b["soft_label"] > 0.2).sum(1) == 2).any() for b in full)
    loaders = [build_loader(cfg, r, 2) for r in range(2)]
    its = [iter(ld) for ld in loaders]
    for _ in range(cut):
        for it in its:
            next(it)
    state = loaders[0].state_dict()
    for world, workers in ((2, 0), (1, 2), (3, 1)):
        rest = global_batches(cfg_for(shards[fmt], fmt, num_workers=workers), world, total - cut,
                              state)
        for step, (a, b) in enumerate(zip(full[cut:], rest)):
            for key in a:
                assert torch.equal(a[key], b[key]), (world, workers, step + cut, key)
    # another epoch augments the same sample differently
    epoch_len = 57 // GLOBAL_BATCH
    first = {int(s): i for i, s in enumerate(full[0]["sample_id"])}
    later = [(s, int(sid)) for s in range(epoch_len + 1, total)
             for sid in full[s]["sample_id"] if int(sid) in first]
    assert later, "no sample of step 0 seen again in the second epoch"
    s, sid = later[0]
    row = int((full[s]["sample_id"] == sid).nonzero()[0])
    assert not torch.equal(full[s]["image"][row], full[0]["image"][first[sid]])


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_eval_is_resize_and_center_crop_without_randomness(shards, fmt):
    cfg = cfg_for(shards[fmt], fmt)
    a = next(iter(build_loader(cfg, 0, 1, "val")))
    b = next(iter(build_loader(cfg_for(shards[fmt], fmt, seed=99), 0, 1, "val")))
    assert "soft_label" not in a and a["image"].shape[1:] == (3, 24, 24)
    assert torch.equal(a["image"], b["image"])


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return read_model_tensors(latest_complete(run_dir / "checkpoints"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_training_on_augmented_jpegs_resumes_bitwise_after_sigkill(shards, tmp_path, fmt):
    """The ViT-B/16 recipe shrunk to a tiny model: SIGKILL mid-run, resume, and the weights end
    bitwise equal to an uninterrupted run (each step saw the same pixels and soft labels)."""
    common = vit_recipe_overrides(shards[fmt], fmt) + [
        "schedule.steps=14", "checkpoint.every_steps=3", "checkpoint.keep_last=2",
        "data.num_workers=1"]
    run_train(0, [*common, f"run.dir={tmp_path / 'ref'}"], recipe=RECIPE)
    victim = tmp_path / "victim"
    killed_at = kill_run_at_step(train_cmd(0, [*common, f"run.dir={victim}"], RECIPE), victim, 7)
    proc = run_train(0, [*common, f"run.dir={victim}"], recipe=RECIPE)
    match = re.search(r"resumed from \S+ at step (\d+)", proc.stderr)
    assert match and 3 <= int(match.group(1)) <= killed_at, proc.stderr[-2000:]
    ref, resumed = final_weights(tmp_path / "ref"), final_weights(victim)
    assert [k for k in ref if not torch.equal(ref[k], resumed[k])] == []


def vit_recipe_overrides(root: str, fmt: str) -> list[str]:
    """configs/vit_b16_224.yaml at a size a CPU runs in milliseconds per step."""
    return ["model.width=32", "model.depth=2", "model.num_heads=2", "model.vit.image_size=24",
            "model.vit.patch_size=8", "model.vit.num_classes=3", f"data.format={fmt}",
            f"data.train_url={root}/train", f"data.val_url={root}/val", "data.image_size=24",
            f"data.global_batch_size={GLOBAL_BATCH}", "data.eval_batch_size=12",
            "schedule.warmup_steps=2", "logging.every_steps=1", "logging.eval_every_steps=5",
            "logging.eval_batches=1", "logging.progress_bar=false", "logging.tensorboard=false",
            "parallel.backend=single"]
