"""`pretrain data build latents`: the stored posterior equals AutoencoderKL.encode run directly,
the bytes do not depend on the worker count, a crashed build resumes with its finished shards,
and the loader draws latents keyed by sample (bitwise equal after resuming on another world
size)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline import DataConfig, build_loader
from data_pipeline.decode import decode_field
from data_pipeline.image_build import build_image_folder
from data_pipeline.latent_build import VaeSource, build_latents
from data_pipeline.source import ShardedSource
from tests.conftest import REPO, run_train, subprocess_env, train_cmd
from tests.interop_libs import diffusers
from tests.test_vision_resume import global_batches, jpeg_folder

SIZE = 16  # pixels; the tiny VAE below halves once: 4 x 8 x 8 latents
SCALE = 0.18215


def tiny_vae_folder(root: Path) -> Path:
    """A random-weight AutoencoderKL built from its config class, saved as diffusers does."""
    lib = diffusers()
    torch.manual_seed(0)
    vae = lib.AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
        layers_per_block=1, sample_size=SIZE)
    with torch.no_grad():  # logvar spread over a range, so the draws test std, not just mean
        vae.quant_conv.bias[4:] = torch.linspace(-3, 1, 4)
    vae.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latents")
    folder = jpeg_folder(str(root / "folder"), classes=3, per_class=9, seed=4)
    paths = {"vae": tiny_vae_folder(root / "vae"), "folder": Path(folder)}
    for fmt in ("wds", "mds"):
        build_image_folder(folder, str(root / f"img-{fmt}"), fmt, shard_samples=4)
        paths[f"img-{fmt}"] = root / f"img-{fmt}"
        build_latents(str(root / f"img-{fmt}"), str(root / f"lat-{fmt}"), fmt,
                      VaeSource(str(paths["vae"])), size=SIZE, batch_size=3)
        paths[f"lat-{fmt}"] = root / f"lat-{fmt}"
    return paths


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """DiT's preprocessing (facebookresearch/DiT train.py), copied as the reference."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                                 resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


def reference_posteriors(sets: dict[str, Path], fmt: str, split: str
                         ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """AutoencoderKL.from_pretrained + encode on every image of an image split, in one batch."""
    vae = diffusers().AutoencoderKL.from_pretrained(sets["vae"]).eval()
    src = ShardedSource(str(sets[f"img-{fmt}"] / split), fmt, DataConfig(format=fmt), False)
    images, labels = [], []
    for sid in range(src.num_samples):
        _, _, raw = src.read(sid)
        label_field = "cls" if fmt == "wds" else "label"
        (image_field,) = set(raw) - {label_field}
        image = Image.open(io.BytesIO(raw[image_field][1])).convert("RGB")
        x = torch.from_numpy(center_crop_arr(image, SIZE)).permute(2, 0, 1).float() / 255
        images.append((x - 0.5) / 0.5)
        labels.append(int(decode_field(*raw[label_field])))
    with torch.no_grad():
        dist = vae.encode(torch.stack(images)).latent_dist
    return dist.mean, dist.logvar, labels


def stored(out: Path, fmt: str, split: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    src = ShardedSource(str(out / split), fmt, DataConfig(format=fmt), False)
    means, logvars, labels = [], [], []
    for sid in range(src.num_samples):
        _, _, raw = src.read(sid)
        means.append(decode_field(*raw["mean.npy" if fmt == "wds" else "mean"]))
        logvars.append(decode_field(*raw["logvar.npy" if fmt == "wds" else "logvar"]))
        labels.append(int(decode_field(*raw["cls" if fmt == "wds" else "label"])))
    return np.stack(means), np.stack(logvars), labels


def shard_hashes(split_dir: Path) -> list[tuple[str, int, str]]:
    manifest = json.loads((split_dir / "manifest.json").read_text())
    return [(s["name"], s["samples"], s["sha256"]) for s in manifest["shards"]]


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_stored_posterior_equals_autoencoderkl_encode(sets, fmt):
    for split in ("train", "val"):
        mean, logvar, labels = stored(sets[f"lat-{fmt}"], fmt, split)
        ref_mean, ref_logvar, ref_labels = reference_posteriors(sets, fmt, split)
        assert labels == ref_labels
        assert mean.shape == (len(labels), 4, SIZE // 2, SIZE // 2) and mean.dtype == np.float32
        assert np.abs(mean - ref_mean.numpy()).max() <= 1e-6
        assert np.abs(logvar - ref_logvar.numpy()).max() <= 1e-6
        assert logvar.std() > 0.5  # the posterior is not a point: draws will differ
    meta = json.loads((sets[f"lat-{fmt}"] / "train" / "manifest.json").read_text())["meta"]
    assert meta["kind"] == "latents" and meta["latent_shape"] == [4, SIZE // 2, SIZE // 2]
    assert meta["num_classes"] == 3 and meta["scaling_factor"] == SCALE


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_cli_workers_and_a_weights_file_give_the_same_bytes(sets, tmp_path, fmt):
    """2 worker processes through the CLI, the VAE given as safetensors + --vae-config: the
    shards are byte for byte those of the in-process build."""
    weights = tmp_path / "vae.safetensors"
    shutil.copy(sets["vae"] / "diffusion_pytorch_model.safetensors", weights)
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", "data", "build", "latents", "--src",
         str(sets[f"img-{fmt}"]), "--vae", str(weights), "--vae-config", str(sets["vae"]),
         "--format", fmt, "--out", str(tmp_path / "out"), "--size", str(SIZE),
         "--batch-size", "3", "--workers", "2"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "latents 4x8x8" in proc.stdout
    for split in ("train", "val"):
        assert shard_hashes(tmp_path / "out" / split) == shard_hashes(sets[f"lat-{fmt}"] / split)


def test_crashed_build_keeps_finished_shards_and_ends_equal(sets, tmp_path):
    """A build that dies at a bad input shard keeps the shards it finished; the rerun, with the
    shard repaired, writes only the rest and ends byte for byte equal to a clean build."""
    images = tmp_path / "img"
    shutil.copytree(sets["img-wds"], images)
    victim = images / "train" / "shard-000002.tar"
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # sha256 no longer matches
    out = tmp_path / "out"
    vae = VaeSource(str(sets["vae"]))
    with pytest.raises(Exception, match="shard-000002"):
        build_latents(str(images), str(out), "wds", vae, size=SIZE, batch_size=3)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    assert sorted(finished) == ["shard-000000.tar", "shard-000001.tar"]
    victim.write_bytes(good)
    build_latents(str(images), str(out), "wds", vae, size=SIZE, batch_size=3)
    for name, mtime in finished.items():
        assert (out / "train" / name).stat().st_mtime_ns == mtime, name
    for split in ("train", "val"):
        assert shard_hashes(out / split) == shard_hashes(sets["lat-wds"] / split)
    assert not (out / ".build").exists()


def test_bad_vae_is_one_line_exit_2(sets, tmp_path):
    weights = tmp_path / "vae.safetensors"
    shutil.copy(sets["vae"] / "diffusion_pytorch_model.safetensors", weights)
    cases = [
        (["--vae", str(tmp_path / "nothing")], "no such file or folder"),
        (["--vae", str(weights)], "--vae-config"),
        (["--vae", str(sets["folder"])], "config.json"),
    ]
    for args, needle in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "pretrain", "data", "build", "latents", "--src",
             str(sets["img-wds"]), "--format", "wds", "--out", str(tmp_path / "o"), *args],
            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # without diffusers: one line naming the extra that installs it
    argv = ["data", "build", "latents", "--src", str(sets["img-wds"]), "--vae", str(sets["vae"]),
            "--format", "wds", "--out", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['diffusers'] = None; from pretrain.cli"
         f" import main; main({argv!r})"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "pretrain data build latents: error: diffusers is not installed (import of diffusers"
        " halted; None in sys.modules): pip install 'pretrain[vae]'"]
    bad_layout = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"encoder.conv_in.weight": torch.zeros(1)}, str(bad_layout))
    with pytest.raises(ValueError, match="not diffusers' AutoencoderKL layout"):
        VaeSource(str(bad_layout), str(sets["vae"])).load()


def test_undecodable_image_names_its_sample(sets, tmp_path):
    folder = tmp_path / "folder" / "class0"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (9, 9, 9)).save(folder / "a.jpg")
    data = (sets["folder"] / "class0" / "000.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 3])  # a header, then cut short
    build_image_folder(str(tmp_path / "folder"), str(tmp_path / "img"), "wds", val_fraction=0)
    with pytest.raises(ValueError, match=r"train/shard-000000.tar sample 000000001: cannot decode"):
        build_latents(str(tmp_path / "img"), str(tmp_path / "out"), "wds",
                      VaeSource(str(sets["vae"])), size=SIZE)


def latent_cfg(root: Path, fmt: str, **kw) -> DataConfig:
    base = dict(format=fmt, train_url=str(root / "train"), val_url=str(root / "val"),
                global_batch_size=6, shuffle_window=2, seed=5, num_workers=0, random_flip=True)
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_loader_draws_scaled_posterior_samples_and_resumes_bitwise(sets, fmt):
    root = sets[f"lat-{fmt}"]
    mean, logvar, labels = stored(root, fmt, "train")
    cfg = latent_cfg(root, fmt)
    total, cut = 8, 3  # 21 training samples: crosses into later epochs
    full = global_batches(cfg, 2, total)
    assert full[0]["image"].shape == (6, 4, SIZE // 2, SIZE // 2)
    # unflipped, each row is (mean + std * noise) * scale with standard normal noise
    noise = []
    for batch in global_batches(latent_cfg(root, fmt, random_flip=False), 2, total):
        for x, sid, label in zip(batch["image"].numpy(), batch["sample_id"], batch["label"]):
            sid = int(sid)
            assert int(label) == labels[sid]
            noise.append(((x / SCALE - mean[sid]) / np.exp(0.5 * logvar[sid])).ravel())
    z = np.concatenate(noise)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05, (z.mean(), z.std())
    # without sampling: the scaled mean, flipped for some rows
    flips = []
    for batch in global_batches(latent_cfg(root, fmt, latent_sample=False), 2, total):
        for x, sid in zip(batch["image"].numpy(), batch["sample_id"]):
            want = mean[int(sid)] * np.float32(SCALE)
            flips.append(not np.array_equal(x, want))
            assert np.array_equal(x, want[..., ::-1] if flips[-1] else want)
    assert 0.2 < np.mean(flips) < 0.8
    loaders = [build_loader(cfg, r, 2) for r in range(2)]
    its = [iter(ld) for ld in loaders]
    for _ in range(cut):
        for it in its:
            next(it)
    state = loaders[0].state_dict()
    for world, workers in ((1, 2), (3, 0)):
        rest = global_batches(latent_cfg(root, fmt, num_workers=workers), world, total - cut,
                              state)
        for step, (a, b) in enumerate(zip(full[cut:], rest)):
            for key in a:
                assert torch.equal(a[key], b[key]), (world, workers, step + cut, key)


def test_image_options_on_latents_are_refused(sets):
    cfg = latent_cfg(sets["lat-wds"], "wds", image_size=32)
    with pytest.raises(ValueError, match="data.image_size applies to images"):
        build_loader(cfg, 0, 1)


RECIPE = "configs/dit_xl2_latents.yaml"


def test_dit_xl2_recipe_is_the_paper_model():
    from pretrain.config import load_config
    from pretrain.models import model_stats

    cfg = load_config(REPO / RECIPE, [])
    m, d = cfg.model, cfg.model.dit
    assert (m.depth, m.width, m.num_heads, d.patch_size) == (28, 1152, 16, 2)
    assert (d.image_size, d.in_channels, d.num_classes) == (32, 4, 1000)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.global_batch_size) == (1e-4, 0.0, 256)
    assert (cfg.optim.ema_decay, d.learn_sigma, d.objective) == (0.9999, True, "ddpm")
    params = model_stats(m)["params"]
    assert abs(params - 675e6) / 675e6 < 0.01, params  # DiT-XL/2: 675M (Table 4 of the paper)


def test_gpu_check_measures_the_recipes_models(monkeypatch):
    """bench/gpu_check.py's DiT-XL/2 and ViT-B/16 are the recipes' models (it once measured a
    flow-matching DiT while the recipe trains DDPM)."""
    import importlib.util

    from pretrain.config import load_config

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look it up
    spec.loader.exec_module(gpu_check)
    cases = {c.name: gpu_check.model_config(c) for c in gpu_check.FULL}
    assert cases["dit_xl2_32x32x4"] == load_config(REPO / RECIPE, []).model
    assert cases["vit_b16_224"] == load_config(REPO / "configs/vit_b16_224.yaml", []).model


def shrunk_recipe(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """configs/dit_xl2_latents.yaml at toy size on a built latent set: 4 steps, a grid at 4."""
    return [
        "model.width=32", "model.depth=2", "model.num_heads=2", f"model.dit.image_size={SIZE // 2}",
        "model.dit.num_classes=3", "model.dit.sample_steps=2", f"data.train_url={root}/train",
        f"data.val_url={root}/val", "data.global_batch_size=6", "data.eval_batch_size=6",
        "data.num_workers=1", "schedule.steps=4", "checkpoint.every_steps=2",
        "logging.every_steps=1", "logging.eval_every_steps=4", "logging.eval_batches=1",
        "logging.progress_bar=false", "logging.tensorboard=false", "parallel.backend=single",
        f"run.dir={run_dir}", *extra]


@pytest.mark.slow
def test_dit_xl2_recipe_shrunk_trains_on_built_latents_and_its_grid_decodes_through_the_vae(
        sets, tmp_path):
    """The PNG grid is the trainer's own samples decoded by AutoencoderKL.decode: at the image
    resolution, equal to decoding the latents that the sampler (same seed) draws from the
    checkpointed EMA weights (the recipe's optim.ema_decay), directly through diffusers."""
    from pretrain.checkpoint import latest_complete, read_model_tensors
    from pretrain.config import load_config
    from pretrain.diffusion.grid import make_grid
    from pretrain.models import build_model
    from pretrain.models.dit import sample_images

    run = tmp_path / "run"
    proc = run_train(0, shrunk_recipe(sets["lat-wds"], run, f"model.dit.vae={sets['vae']}"),
                     recipe=RECIPE)
    ckpt = latest_complete(run / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_00000004", proc.stderr[-2000:]
    png = np.asarray(Image.open(run / "samples" / "step_00000004.png"))
    rows, pad = 3, 1  # one row per class, one sample per class, 1 px between
    assert png.shape == (rows * (SIZE + pad) + pad, SIZE + 2 * pad, 3)  # pixels, not 8x8 latents
    cfg = load_config(run / "config.yaml", [])
    model = build_model(cfg.model)
    model.load_state_dict(read_model_tensors(ckpt, "ema."))
    model.eval()
    latents = sample_images(model, torch.arange(3))
    assert latents.shape == (3, 4, SIZE // 2, SIZE // 2)
    vae = diffusers().AutoencoderKL.from_pretrained(sets["vae"]).eval()
    with torch.no_grad():
        pixels = vae.decode(latents / SCALE).sample  # the set's shift_factor is 0
    want = make_grid(pixels, rows=rows, upscale=1).permute(1, 2, 0).numpy()
    assert np.array_equal(png, want), np.abs(png.astype(int) - want).max()
    assert pixels.std() > 0.01  # a real picture, not a constant the comparison would miss


def test_latent_decoder_undoes_scale_and_shift_in_chunks_with_autocast_off(sets):
    """diffusers' convention, latents = (z - shift) * scale: the decoder feeds z back, chunk by
    chunk, in float32 even inside the trainer's bf16 autocast."""
    from pretrain.latent_decoder import LatentDecoder

    vae = diffusers().AutoencoderKL.from_pretrained(sets["vae"]).eval()
    latents = torch.randn(5, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    decode = LatentDecoder(vae, scaling_factor=0.5, shift_factor=0.3, chunk=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = decode(latents.bfloat16())
    with torch.no_grad():
        want = torch.cat([vae.decode(x / 0.5 + 0.3).sample for x in latents.bfloat16().float()
                          .split(2)])
    assert got.dtype == torch.float32 and got.shape == (5, 3, SIZE, SIZE)
    assert torch.equal(got, want)


def test_latent_set_without_vae_keeps_the_channel_view_and_says_so(sets, caplog):
    from pretrain.config import load_config
    from pretrain.latent_decoder import latent_decoder

    root = sets["lat-wds"]
    cfg = load_config(REPO / RECIPE, [f"data.train_url={root}/train", "model.dit.vae="])
    with caplog.at_level("INFO", logger="pretrain.latent_decoder"):
        assert latent_decoder(cfg.model, cfg.data, is_main=True) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"the sample grid shows latent channels 0-2 of {root}/train (set model.dit.vae to the"
        " VAE it was encoded with to see images)"]
    pixels = load_config(REPO / RECIPE, [f"data.train_url={sets['img-wds']}/train"])
    with pytest.raises(ValueError, match="is not a latent set"):
        latent_decoder(pixels.model, pixels.data, is_main=True)


def test_a_vae_other_than_the_encoder_is_refused_in_one_line(sets, tmp_path):
    """Same architecture, other weights: `pretrain train` exits 2 before any step, naming the
    configured VAE and the one the manifest records."""
    other = tmp_path / "other-vae"
    diffusers().AutoencoderKL.from_pretrained(sets["vae"]).save_pretrained(other)
    state = other / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    weights = load_file(str(state))
    weights["decoder.conv_out.bias"] = weights["decoder.conv_out.bias"] + 1
    save_file(weights, str(state))
    run = tmp_path / "run"
    proc = subprocess.run(
        train_cmd(0, shrunk_recipe(sets["lat-wds"], run, f"model.dit.vae={other}"), RECIPE),
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"model.dit.vae {other} (identity" in lines[0], proc.stderr
    assert f"is not the VAE that encoded {sets['lat-wds']}/train (vae, identity" in lines[0]
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
