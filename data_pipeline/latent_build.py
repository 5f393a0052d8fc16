"""`pretrain data build latents`: an image set written by `data build images` (WDS or MDS) ->
the same samples as VAE latent distributions, for latent diffusion training (DiT on 32x32x4
latents of 256 px images).

Each image is prepared as DiT's reference pipeline does (ADM's center crop: halve with a box
filter while the short side is >= 2 * size, bicubic resize of the short side to size, center
crop; then [0, 1] -> [-1, 1]) and encoded by diffusers' AutoencoderKL. A sample keeps its label
and stores the posterior's `mean` and `logvar` [C, h, w] exactly as `AutoencoderKL.encode(x)
.latent_dist` gives them (unscaled): the loader (`latents.py`) draws mean + std * noise per
(seed, epoch, sample id) and applies the VAE's scaling factor, so every epoch sees a fresh sample
of the posterior (fast-DiT stores one draw per image; storing the distribution costs 2x bytes and
keeps that choice at training time).

Output shard i of a split holds the samples of input shard i, in order, encoded in batches of
--batch-size from the shard's start, so the bytes depend on neither the worker count nor the
order the workers finish in (each worker runs torch with --threads threads: the same count gives
the same floating-point reductions). Resumable shard by shard (`shard_tasks.py`); a shard's
fingerprint names the input shard's sha256, the VAE's weights and config, size, dtype, batch,
device and threads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from typing import Any

import numpy as np
from PIL import Image

from data_pipeline.config import DataConfig
from data_pipeline.decode import decode_field, is_image_encoding, open_image
from data_pipeline.manifest import Manifest
from data_pipeline.shard_tasks import BUILD_DIR, finish_build, run_task, write_task_shard
from data_pipeline.source import ShardedSource
from data_pipeline.storage import ShardStore, sha256_file
from data_pipeline.transforms import LABEL_KEYS, image_field, pick

DTYPES = ("float32", "float16")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' save_pretrained file


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """DiT's / ADM's `center_crop_arr`: box-halve while the short side is >= 2 * size, bicubic
    resize so the short side is `size`, center crop size x size."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top:top + size, left:left + size])


def vae_input(images: list[Image.Image]) -> Any:
    """RGB images -> float32 [B, 3, H, W] in [-1, 1], as ToTensor + Normalize(0.5, 0.5)."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)


@dataclass(frozen=True)
class VaeSource:
    """Where the VAE comes from: a `save_pretrained` folder, or a .safetensors file plus its
    config.json (--vae-config). Nothing is downloaded."""

    path: str
    config: str = ""
    flag: str = "--vae"  # how error messages name the two (a CLI flag or a config key)
    config_flag: str = "--vae-config"

    def check(self) -> None:
        """One-line errors naming the culprit, before any worker starts."""
        if os.path.isdir(self.path):
            for name in ("config.json", WEIGHTS_NAME):
                if not os.path.isfile(os.path.join(self.path, name)):
                    raise ValueError(f"{self.flag} {self.path}: no {name} (a diffusers"
                                     " AutoencoderKL save_pretrained folder holds config.json and"
                                     f" {WEIGHTS_NAME})")
        elif not os.path.isfile(self.path):
            raise ValueError(f"{self.flag} {self.path}: no such file or folder")
        elif not self.path.endswith(".safetensors"):
            raise ValueError(f"{self.flag} {self.path}: give a .safetensors file (other formats"
                             " are pickles, never loaded here) or a save_pretrained folder")
        elif not self.config:
            raise ValueError(f"{self.flag} {self.path} is a weights file: pass its config.json"
                             f" with {self.config_flag}")
        elif not os.path.isfile(self._config_path()):
            raise ValueError(f"{self.config_flag} {self.config}: no such file")

    def _config_path(self) -> str:
        if os.path.isdir(self.path):
            return os.path.join(self.path, "config.json")
        return os.path.join(self.config, "config.json") if os.path.isdir(self.config) \
            else self.config

    def _weights_path(self) -> str:
        return os.path.join(self.path, WEIGHTS_NAME) if os.path.isdir(self.path) else self.path

    def identity(self) -> str:
        """sha256 over the config's values and the weights file: what the latents depend on."""
        with open(self._config_path()) as f:
            config = json.load(f)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        text = json.dumps(config, sort_keys=True) + sha256_file(self._weights_path())
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self) -> Any:
        """The AutoencoderKL in eval mode (float32, CPU)."""
        from data_pipeline._compat import import_diffusers

        vae_class = import_diffusers().AutoencoderKL
        with open(self._config_path()) as f:
            config = json.load(f)
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"{self._config_path()}: _class_name {config['_class_name']!r},"
                             " expected AutoencoderKL")
        vae = vae_class.from_config(config)
        from safetensors.torch import load_file

        state = load_file(self._weights_path())
        own = vae.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"{self._weights_path()}: not diffusers' AutoencoderKL layout for"
                             f" {self._config_path()} (missing {missing[:2]}, unexpected"
                             f" {unexpected[:2]})")
        for name, value in state.items():
            if value.shape != own[name].shape:
                raise ValueError(f"{self._weights_path()}: {name} has shape {tuple(value.shape)},"
                                 f" the config wants {tuple(own[name].shape)}")
        vae.load_state_dict(state)
        return vae.float().eval()


@dataclass(frozen=True)
class LatentJob:
    """Everything a worker needs besides the task: the same for every task of a build."""

    src: str  # the image set's root (train/ and val/ below it)
    src_format: str
    out: str
    fmt: str
    vae: VaeSource
    vae_identity: str
    size: int
    batch_size: int
    dtype: str
    device: str
    threads: int


Task = tuple[str, int, int, str]  # split, shard index, first key, input shard's digest

_worker: dict[str, Any] = {}  # per process: the loaded VAE and the open input sources


def _ensure_worker(job: LatentJob, vae: Any = None) -> None:
    """Load the VAE and set the thread count once per process, at its first task (not in a pool
    initializer: a failing initializer makes the pool respawn workers forever)."""
    if _worker.get("job") == job:
        return
    import torch

    torch.set_num_threads(job.threads)
    if job.fmt == "mds":  # streaming's stand-in first; the diffusers import then blocks it
        from data_pipeline._compat import import_streaming

        import_streaming()
    _worker.update(job=job, vae=(vae if vae is not None else job.vae.load()).to(job.device),
                   sources={})


def _source(job: LatentJob, split: str) -> ShardedSource:
    sources = _worker["sources"]
    if split not in sources:
        cfg = DataConfig(format=job.src_format, verify_checksums="always")
        sources[split] = ShardedSource(os.path.join(job.src, split), job.src_format, cfg, False)
    return sources[split]


def _images(job: LatentJob, split: str, shard: int) -> Iterator[tuple[Image.Image, int]]:
    src = _source(job, split)
    reader = src.reader(shard)
    cfg = DataConfig()
    for index in range(len(reader)):
        raw = reader.read(index)
        img_key, lbl_key = image_field(raw, cfg), pick(raw, "", LABEL_KEYS)
        if img_key is None or lbl_key is None:
            raise ValueError(f"{src.url}/{reader.name} sample {reader.key(index)}: no image/label"
                             f" field among {sorted(raw)}")
        encoding, data = raw[img_key]
        try:
            image = open_image(data) if is_image_encoding(encoding) else decode_field(encoding,
                                                                                     data)
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            label = int(decode_field(*raw[lbl_key]))
            prepared = adm_center_crop(image.convert("RGB"), job.size)
        except Exception as e:  # noqa: BLE001 - any decode failure: name the sample
            raise ValueError(f"{src.url}/{reader.name} sample {reader.key(index)}: cannot"
                             f" decode: {type(e).__name__}: {e}") from e
        yield prepared, label


def encode_batch(vae: Any, images: list[Image.Image], device: str) -> tuple[Any, Any]:
    """(mean, logvar) of the VAE's posterior for a batch of prepared images, on the CPU."""
    import torch

    with torch.no_grad():
        dist = vae.encode(vae_input(images).to(device)).latent_dist
    return dist.mean.float().cpu(), dist.logvar.float().cpu()


def _latent_samples(job: LatentJob, split: str, shard: int) -> Iterator[dict[str, Any]]:
    pending = _images(job, split, shard)
    while True:
        batch = list(islice(pending, job.batch_size))
        if not batch:
            return
        mean, logvar = encode_batch(_worker["vae"], [im for im, _ in batch], job.device)
        for i, (_, label) in enumerate(batch):
            yield {"mean": mean[i].numpy().astype(job.dtype),
                   "logvar": logvar[i].numpy().astype(job.dtype), "label": label}


def _run(args: tuple[Task, LatentJob]) -> tuple[str, int, list[dict]]:
    (split, index, first, digest), job = args
    _ensure_worker(job)
    count = _source(job, split).manifest.shards[index].samples
    fingerprint = hashlib.sha256(json.dumps(
        [split, index, first, digest, job.fmt, job.vae_identity, job.size, job.batch_size,
         job.dtype, job.device, job.threads]).encode()).hexdigest()

    def write() -> list[dict]:
        samples = _latent_samples(job, split, index)
        return write_task_shard(job.out, split, index, first, job.fmt, samples, count)

    return split, index, run_task(job.out, split, index, fingerprint, write)


def _input_format(split_dir: str) -> str:
    store = ShardStore(split_dir)
    if store.read_small("manifest.json") is None and store.read_small("index.json") is None:
        raise ValueError(f"{split_dir}: no manifest.json or index.json (build the image set with"
                         " `pretrain data build images` first)")
    return "mds" if store.read_small("index.json") is not None else "wds"


def build_latents(src: str, out: str, fmt: str, vae: VaeSource, size: int = 256,
                  batch_size: int = 32, workers: int = 1, dtype: str = "float32",
                  device: str = "cpu", threads: int = 1) -> dict[str, Manifest]:
    """Encode SRC/train and SRC/val (image sets) into OUT/train and OUT/val (latent sets)."""
    if fmt not in ("wds", "mds"):
        raise ValueError(f"--format {fmt!r}: choose wds or mds")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {DTYPES}")
    for name, value in (("--size", size), ("--batch-size", batch_size), ("--threads", threads)):
        if value < 1:
            raise ValueError(f"{name} {value}: need at least 1")
    vae.check()
    vae_config = _vae_config(vae)
    factor = latent_factor(vae_config)
    if size % factor:
        raise ValueError(f"--size {size}: the VAE downsamples by {factor}; give a multiple")
    splits = [s for s in ("train", "val") if os.path.isdir(os.path.join(src, s))]
    if not splits:
        raise ValueError(f"--src {src}: no train/ or val/ folder (the OUT of `pretrain data"
                         " build images`)")
    src_format = _input_format(os.path.join(src, splits[0]))
    job = LatentJob(src, src_format, out, fmt, vae, vae.identity(), size, batch_size, dtype,
                    device, threads)
    tasks: list[Task] = []
    meta: dict[str, Any] = {}
    for split in splits:
        source = ShardedSource(os.path.join(src, split), src_format,
                               DataConfig(format=src_format), shuffle=False)
        meta = meta or dict(source.manifest.meta)
        os.makedirs(os.path.join(out, split), exist_ok=True)
        offsets = source.manifest.shard_offsets()
        for i, shard in enumerate(source.manifest.shards):
            digest = shard.sha256 or json.dumps(shard.declared_hashes(), sort_keys=True)
            tasks.append((split, i, int(offsets[i]), f"{shard.name}|{shard.bytes}|{digest}"))
    os.makedirs(os.path.join(out, BUILD_DIR), exist_ok=True)
    jobs = [(task, job) for task in tasks]
    import torch

    threads_before = torch.get_num_threads()
    try:
        vae_model = vae.load()  # a bad VAE (or no diffusers) fails here once, in one line
        if workers <= 1:
            _ensure_worker(job, vae_model)
            results = [_run(one) for one in jobs]
        else:
            del vae_model
            with get_context("spawn").Pool(workers) as pool:
                results = pool.map(_run, jobs, chunksize=1)
    finally:
        torch.set_num_threads(threads_before)
        _worker.clear()
    meta = {
        "kind": "latents", "name": meta.get("name", os.path.basename(src.rstrip("/"))),
        "classes": meta.get("classes", []), "num_classes": meta.get("num_classes", 0),
        "image_size": size,
        "latent_shape": [vae_config.get("latent_channels", 4), size // factor, size // factor],
        "latent_dtype": dtype,
        "scaling_factor": vae_config.get("scaling_factor", 0.18215),
        "shift_factor": vae_config.get("shift_factor") or 0.0,
        "vae": {"source": os.path.basename(vae.path.rstrip("/")), "identity": job.vae_identity},
    }
    return finish_build(out, fmt, results, meta)


def _vae_config(vae: VaeSource) -> dict:
    with open(vae._config_path()) as f:
        return json.load(f)


def latent_factor(config: dict) -> int:
    """Pixels per latent cell: 2 per down block after the first (8 for SD's VAE)."""
    return 2 ** (len(config.get("block_out_channels", [64])) - 1)
