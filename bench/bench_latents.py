"""`data build latents` throughput: images/s of ours (shard read, ADM center crop, encode,
posterior written as latent shards with checksums) against a plain loop over the same JPEGs
(PIL open, the same center crop, `AutoencoderKL.encode` in batches, mean/logvar kept in
memory) with the same torch threads and batch. The VAE is randomly initialised from its config
class (nothing downloaded): SD's layout with the widths given (SD's own: 128,256,512,512, slow
on a CPU). Rounds alternate the order (ours first, then plain first); the best of each is kept.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_latents.py --images 16 --threads 1
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_vision import make_folder  # noqa: E402
from data_pipeline._compat import import_diffusers  # noqa: E402
from data_pipeline.image_build import build_image_folder  # noqa: E402
from data_pipeline.latent_build import (  # noqa: E402
    VaeSource,
    adm_center_crop,
    build_latents,
    vae_input,
)


def random_vae(folder: str, widths: list[int]) -> str:
    """An AutoencoderKL with SD's block layout and the given widths, random weights, saved as
    diffusers' save_pretrained does."""
    torch.manual_seed(0)
    vae = import_diffusers().AutoencoderKL(
        block_out_channels=tuple(widths), down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths), latent_channels=4,
        layers_per_block=2, norm_num_groups=min(32, widths[0]))
    vae.save_pretrained(folder)
    return folder


def plain_loop(folder: str, vae_dir: str, size: int, batch: int, threads: int) -> float:
    """Seconds for the plain loop over every JPEG under `folder`."""
    torch.set_num_threads(threads)
    start = time.perf_counter()  # from loading the VAE, as ours is timed
    vae = import_diffusers().AutoencoderKL.from_pretrained(vae_dir).eval()
    paths = sorted(glob.glob(f"{folder}/*/*.jpg"))
    kept = []
    for i in range(0, len(paths), batch):
        images = [adm_center_crop(Image.open(p).convert("RGB"), size) for p in paths[i:i + batch]]
        with torch.no_grad():
            dist = vae.encode(vae_input(images)).latent_dist
        kept.append((dist.mean.numpy().copy(), dist.logvar.numpy().copy()))
    return time.perf_counter() - start


def ours(shards: str, out: str, vae_dir: str, size: int, batch: int, threads: int) -> float:
    """Seconds for `data build latents` (one worker process, `threads` torch threads)."""
    start = time.perf_counter()
    build_latents(shards, out, "wds", VaeSource(vae_dir), size=size, batch_size=batch,
                  workers=1, threads=threads)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--widths", default="32,64,128,128", help="VAE block_out_channels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-latents-")
    folder, shards = os.path.join(root, "folder"), os.path.join(root, "wds")
    make_folder(folder, args.images)
    build_image_folder(folder, shards, "wds", shard_samples=max(1, args.images // 2),
                       val_fraction=0.0, workers=1)
    vae_dir = random_vae(os.path.join(root, "vae"), [int(w) for w in args.widths.split(",")])
    load = open("/proc/loadavg").read().split()[:3]
    print(f"{args.images} JPEGs (~500x375) -> {args.size} px, VAE widths {args.widths}, batch"
          f" {args.batch}, {args.threads} threads; loadavg {load}")
    best = {"plain": np.inf, "ours": np.inf}
    for r in range(args.rounds):
        order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
        for name in order:
            if name == "plain":
                seconds = plain_loop(folder, vae_dir, args.size, args.batch, args.threads)
            else:
                out = os.path.join(root, f"lat{r}")
                seconds = ours(shards, out, vae_dir, args.size, args.batch, args.threads)
            best[name] = min(best[name], seconds)
            print(f"round {r} {name}: {args.images / seconds:.2f} images/s", flush=True)
    print("\n| pipeline | images/s | ratio to plain |\n|---|---:|---:|")
    for name in ("plain", "ours"):
        rate = args.images / best[name]
        print(f"| {name} | {rate:.2f} | {best['plain'] / best[name]:.2f} |")
    print(f"\nloadavg after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
