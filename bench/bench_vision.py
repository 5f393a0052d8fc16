"""JPEG training input at 224 px: decode + random-resized-crop + flip + normalise, this project's
loader against a plain webdataset + PIL pipeline doing the same operations with the same
workers, on the same WDS shards of JPEG bytes; plus ours with the full augmentation policy.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_vision.py --images 2000 --workers 2

The images are ImageNet-like in size (about 500x375, smooth content plus noise: ~60-120 KB at
quality 90), written by `data build images` (bytes kept). Both pipelines use the same crop
sampler (torchvision's RandomResizedCrop algorithm, scale 0.08-1), PIL bilinear resize, a
horizontal flip, ImageNet mean/std, float32 CHW. The plain one decodes every JPEG at full size
(`decode("pil")`); ours decodes at 1/2..1/8 scale when the crop allows (`data.jpeg_draft`,
shown on and off). Loaders run round-robin for `--rounds` rounds; the best round is kept.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import DataConfig, build_loader  # noqa: E402
from data_pipeline.augment import random_resized_crop_box  # noqa: E402
from data_pipeline.image_build import build_image_folder  # noqa: E402

SIZE = 224
MEAN = np.asarray([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
STD = np.asarray([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
CROP = dict(image_mode="RGB", image_size=SIZE, random_resized_crop=True, random_flip=True,
            image_mean=MEAN.ravel().tolist(), image_std=STD.ravel().tolist())
FULL_POLICY = dict(auto_augment="rand-m9-n2-mstd0.5", mixup_alpha=0.8, cutmix_alpha=1.0,
                   label_smoothing=0.1)


def make_folder(root: str, num: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(num):
        width, height = int(rng.integers(400, 600)), int(rng.integers(300, 450))
        base = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, f"class{i % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def plain_webdataset(root: str, batch: int, workers: int):
    """webdataset + PIL: full decode, the same crop sampler, resize, flip, normalise."""
    import webdataset as wds

    rng = np.random.default_rng(0)

    def augment(image: Image.Image) -> np.ndarray:
        box = random_resized_crop_box(*image.size, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR, box=box)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.ascontiguousarray(np.asarray(image, np.uint8).transpose(2, 0, 1))
        return (arr.astype(np.float32) / 255.0 - MEAN) / STD

    urls = sorted(glob.glob(f"{root}/*.tar"))
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, repeat=True)
          .shuffle(256).decode("pil").to_tuple("jpg", "cls").map_tuple(augment, int)
          .batched(batch))
    return lambda: iter(wds.WebLoader(ds, batch_size=None, num_workers=workers))


def ours(root: str, batch: int, workers: int, **kw):
    cfg = DataConfig(format="wds", train_url=root, global_batch_size=batch, num_workers=workers,
                     **{**CROP, **kw})
    return lambda: iter(build_loader(cfg, 0, 1))


def samples_per_s(make_iter, warmup: int, batches: int, batch: int) -> float:
    it = make_iter()
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        out = next(it)
        image = out["image"] if isinstance(out, dict) else out[0]
        assert tuple(image.shape[1:]) == (3, SIZE, SIZE)
    elapsed = time.perf_counter() - start
    del it
    return batches * batch / elapsed


def draft_effect(num: int = 20, repeats: int = 3) -> str:
    """Per-image ms in one process: 1024x768 JPEGs (~ a photo) -> eval center crop 0.875 at 224,
    with and without draft decoding (a 672 px crop decodes at 1/2 scale)."""
    from data_pipeline.transforms import ImageRows

    rng = np.random.default_rng(1)
    raws = []
    for _ in range(num):
        base = rng.integers(0, 256, (49, 65, 3)).astype(np.uint8)
        image = Image.fromarray(base).resize((1024, 768), Image.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90)
        raws.append({"jpg": ("jpg", out.getvalue()), "cls": ("cls", b"0")})
    row = []
    for draft in (True, False):
        cfg = DataConfig(format="wds", eval_crop_fraction=0.875, jpeg_draft=draft, **CROP)
        rows = ImageRows(cfg, 3, SIZE, SIZE, train=False)
        best = min(_time_rows(rows, raws) for _ in range(repeats))
        row.append(f"{best * 1e3:.1f} ms")
    return f"eval center crop of 1024x768 JPEGs at 224, per image: draft {row[0]}, full {row[1]}"


def _time_rows(rows, raws) -> float:
    start = time.perf_counter()
    for i, raw in enumerate(raws):
        rows(raw, "bench", str(i), i, 0)
    return (time.perf_counter() - start) / len(raws)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="", help="keep the data here (default: a temp dir)")
    parser.add_argument("--draft-only", action="store_true", help="only the draft decode figure")
    args = parser.parse_args()
    print(draft_effect())
    if args.draft_only:
        return

    root = args.dir or tempfile.mkdtemp(prefix="bench-vision-")
    shards = os.path.join(root, "wds")
    if not os.path.exists(os.path.join(shards, "train", "manifest.json")):
        make_folder(os.path.join(root, "folder"), args.images)
        build_image_folder(os.path.join(root, "folder"), shards, "wds",
                           shard_samples=min(250, max(1, args.images // (4 * args.workers))),
                           val_fraction=0.0, workers=args.workers)
    train = os.path.join(shards, "train")
    sizes = [os.path.getsize(p) for p in glob.glob(f"{root}/folder/*/*.jpg")]
    print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB; batch {args.batch},"
          f" {args.workers} workers; loadavg {open('/proc/loadavg').read().split()[:3]}")
    loaders = {
        "plain webdataset + PIL": plain_webdataset(train, args.batch, args.workers),
        "ours (draft decode)": ours(train, args.batch, args.workers),
        "ours (full decode)": ours(train, args.batch, args.workers, jpeg_draft=False),
        "ours + RandAugment + mixup/cutmix": ours(train, args.batch, args.workers, **FULL_POLICY),
    }
    best = dict.fromkeys(loaders, 0.0)
    for _ in range(args.rounds):
        for name, make in loaders.items():
            best[name] = max(best[name], samples_per_s(make, args.warmup, args.batches, args.batch))
    base = best["plain webdataset + PIL"]
    print("\n| pipeline | samples/s | ratio to plain |\n|---|---:|---:|")
    for name, value in best.items():
        print(f"| {name} | {value:,.0f} | {value / base:.2f} |")
    print(f"\nloadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
