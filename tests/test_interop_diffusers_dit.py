"""The DiT leaves and re-enters diffusers as DiTTransformer2DModel
(pretrain/interop/diffusers_dit.py): the same prediction (fp32, <= 1e-5) for the same noisy
image, timestep and class label, and export -> import -> export writes the same bytes.

Checkpoints: one the trainer wrote, and one of random weights (std 0.2 everywhere, so the
adaLN gates and the output layer are far from their zero init and every path matters).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pretrain.checkpoint import read_model_tensors
from pretrain.checkpoint.convert import import_safetensors
from pretrain.config import load_config
from pretrain.interop import ExportRefused, export_folder, import_folder
from pretrain.interop.diffusers_dit import check_expressible
from pretrain.models import build_model
from pretrain.trainer import train
from tests.conftest import REPO, TINY
from tests.interop_libs import diffusers

RECIPE = REPO / "configs/dit_digits.yaml"
BASE = [*TINY, "data.name=digits", "parallel.backend=single", "schedule.steps=2",
        "checkpoint.every_steps=2", "model.dit.time_freq_shift=1"]
VARIANTS = {"sp": [], "mup_folded": ["model.mup.enabled=true", "model.mup.base_width=16",
                                     "model.mup.output_mult=2.0"],
            # 2x output channels (noise, variance values), as DiT's release; and an EMA
            "learn_sigma": ["model.dit.objective=ddpm", "model.dit.learn_sigma=true",
                            "model.dit.sampler=ddpm", "optim.ema_decay=0.5"]}


def cfg_for(run_dir: Path, variant: str):
    return load_config(RECIPE, [*BASE, *VARIANTS[variant], f"run.dir={run_dir}"])


@pytest.fixture(scope="module", params=[("sp", "trained"), ("sp", "random"),
                                        ("mup_folded", "random"), ("learn_sigma", "trained"),
                                        ("learn_sigma", "random")], ids="-".join)
def checkpoint(request, tmp_path_factory):
    variant, origin = request.param
    run_dir = tmp_path_factory.mktemp(variant) / "run"
    cfg = cfg_for(run_dir, variant)
    if origin == "trained":
        train(cfg)
        return variant, cfg, run_dir / "checkpoints/step_00000002"
    g = torch.Generator().manual_seed(5)
    weights = {n: torch.randn(p.shape, generator=g) * 0.2
               for n, p in build_model(cfg.model).named_parameters()}
    save_file(weights, str(run_dir.parent / "random.safetensors"))
    return variant, cfg, import_safetensors(run_dir.parent / "random.safetensors",
                                            run_dir / "checkpoints", cfg)


def test_dit_transformer_2d_model_computes_our_prediction(checkpoint, tmp_path):
    variant, cfg, ckpt = checkpoint
    folder = export_folder(ckpt, tmp_path / "dit", "diffusers", max_shard_bytes=50_000)
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    theirs = diffusers().DiTTransformer2DModel.from_pretrained(folder).eval()
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    d = cfg.model.dit
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, d.in_channels, d.image_size, d.image_size, generator=g)
    t = torch.tensor([0.0, 1.0, 250.0, 500.5, 999.0])
    labels = torch.tensor([0, 3, 9, d.num_classes, 7])  # num_classes: the null label
    with torch.no_grad():
        want = ours.eval()(x, t, labels)
        got = theirs(x, timestep=t, class_labels=labels).sample
    diff = (got - want).abs().max().item()
    assert diff <= 1e-5, f"{variant}: max abs difference {diff} (output scale {want.abs().max()})"


def test_export_of_the_ema_weights_computes_the_ema_prediction(checkpoint, tmp_path):
    variant, cfg, ckpt = checkpoint
    if cfg.optim.ema_decay == 0 or "step_00000000" in str(ckpt):
        pytest.skip("a trained run with optim.ema_decay > 0 holds an EMA")
    folder = export_folder(ckpt, tmp_path / "dit", "diffusers", ema=True)
    theirs = diffusers().DiTTransformer2DModel.from_pretrained(folder).eval()
    assert theirs.config.out_channels == 2 * cfg.model.dit.in_channels
    ours = build_model(cfg.model)
    ema = read_model_tensors(ckpt, "ema.")
    assert any(not torch.equal(ema[n], w) for n, w in read_model_tensors(ckpt).items())
    ours.load_state_dict(ema)
    d = cfg.model.dit
    x = torch.randn(3, d.in_channels, d.image_size, d.image_size,
                    generator=torch.Generator().manual_seed(3))
    t, labels = torch.tensor([0.0, 10.0, 999.0]), torch.tensor([1, d.num_classes, 4])
    with torch.no_grad():
        want = ours.eval()(x, t, labels)
        got = theirs(x, timestep=t, class_labels=labels).sample
    assert want.shape[1] == 2 * d.in_channels and (got - want).abs().max().item() <= 1e-5


def test_export_import_export_is_bitwise(checkpoint, tmp_path):
    variant, cfg, ckpt = checkpoint
    first = export_folder(ckpt, tmp_path / "a", "diffusers", max_shard_bytes=50_000)
    imported = import_folder(first, tmp_path / "next/checkpoints",
                             cfg_for(tmp_path / "next", variant), "diffusers")
    if variant == "sp":
        original, back = read_model_tensors(ckpt), read_model_tensors(imported)
        assert all(torch.equal(original[k], back[k]) for k in original)
    second = export_folder(imported, tmp_path / "b", "diffusers", max_shard_bytes=50_000)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("override, named", [
    ("model.dit.time_freq_shift=0", "model.dit.time_freq_shift=0"),
    ("model.mlp=swiglu", "model.mlp=swiglu"), ("model.mlp_ratio=2.0", "model.mlp_ratio"),
    ("model.norm_placement=peri", "model.norm_placement=peri"), ("model.bias=false", "model.bias"),
])
def test_inexpressible_dit_options_are_refused_by_name(override, named):
    cfg = load_config(RECIPE, [*BASE, override])
    with pytest.raises(ExportRefused, match=named.replace(".", r"\.")):
        check_expressible(cfg.model)


def test_cli_exports_and_imports_a_diffusers_folder(checkpoint, tmp_path, capsys):
    variant, cfg, ckpt = checkpoint
    if variant != "sp":
        pytest.skip("the CLI path is the same for every variant")
    from pretrain.cli import main

    out = tmp_path / "dit"
    with pytest.raises(SystemExit) as done:
        main(["ckpt", "export", str(ckpt), str(out), "--format", "diffusers"])
    assert done.value.code == 0
    assert (out / "diffusion_pytorch_model.safetensors.index.json").exists()
    recipe = [str(RECIPE), *BASE, f"run.dir={tmp_path / 'next'}"]
    with pytest.raises(SystemExit) as done:
        main(["ckpt", "import", str(out), str(tmp_path / "next/checkpoints"), "--config", *recipe,
              "model.dit.time_freq_shift=0"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and "model.dit.time_freq_shift=0" in err, err
    with pytest.raises(SystemExit) as done:
        main(["ckpt", "import", str(out), str(tmp_path / "next/checkpoints"), "--config", *recipe])
    assert done.value.code == 0
    original, back = read_model_tensors(ckpt), read_model_tensors(tmp_path / "next/checkpoints/"
                                                                  "step_00000000")
    assert all(torch.equal(original[k], back[k]) for k in original)
