"""The ViT leaves and re-enters timm as vision_transformer.VisionTransformer
(pretrain/interop/timm_vit.py): `timm.create_model("local-dir:FOLDER", pretrained=True)` builds
timm's own model from the exported folder and computes our logits (fp32, <= 1e-5), and
export -> import -> export writes the same bytes. timm imports torchvision, which cannot load
against the CPU torch here: the stand-in of data_pipeline/_compat.py serves those imports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import read_model_tensors
from pretrain.config import load_config
from pretrain.interop import ExportRefused, export_folder, folder_format, import_folder
from pretrain.interop.timm_vit import check_expressible
from pretrain.models import build_model
from tests.conftest import TINY
from tests.interop_libs import timm
from tests.interop_vit import VIT_RECIPE as RECIPE
from tests.interop_vit import trained_vit, vit_config

TIMM_EPS = "model.norm_eps=1e-6"
VARIANTS = {
    "cls": [],
    # mean pooling, qk_norm, no biases, muP's readout and the depth rule's branch multipliers
    "mean_folded": ["model.vit.pooling=mean", "model.qk_norm=true", "model.bias=false",
                    "model.mup.enabled=true", "model.mup.base_width=32",
                    "model.mup.output_mult=2.0", "model.mup.depth_alpha=0.5",
                    "model.mup.base_depth=1"],
    # muP at twice the base width: the attention scale folds into the q_norm gain and bias
    "mup_qk_norm": ["model.qk_norm=true", "model.mup.enabled=true", "model.mup.base_width=16"],
    "sigma_reparam": ["model.sigma_reparam=true"],  # folded on export; import refuses it
}


def cli_main(argv: list[str]) -> int:
    from pretrain.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code


def cfg_for(run_dir: Path, variant: str):
    return vit_config(run_dir, TIMM_EPS, *VARIANTS[variant])


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained(request, tmp_path_factory):
    return request.param, *trained_vit(tmp_path_factory, request.param, TIMM_EPS,
                                       *VARIANTS[request.param])


def test_timm_create_model_computes_our_logits(trained, tmp_path):
    variant, cfg, ckpt = trained
    folder = export_folder(ckpt, tmp_path / "timm", "timm")
    lib = timm()
    theirs = lib.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(theirs) is lib.models.VisionTransformer
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    v = cfg.model.vit
    images = torch.randn(6, v.in_channels, v.image_size, v.image_size,
                         generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (theirs(images) - ours.eval()(images)).abs().max().item()
    assert diff <= 1e-5, f"{variant}: max abs logit difference {diff}"


def test_export_import_export_is_bitwise(trained, tmp_path):
    variant, cfg, ckpt = trained
    first = export_folder(ckpt, tmp_path / "a", "timm")
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "model.safetensors"]
    assert folder_format(first) == "timm"
    next_cfg = cfg_for(tmp_path / "next", variant)
    if variant == "sigma_reparam":
        with pytest.raises(ExportRefused, match=r"model\.sigma_reparam"):
            import_folder(first, tmp_path / "next/checkpoints", next_cfg, "timm")
        return
    imported = import_folder(first, tmp_path / "next/checkpoints", next_cfg, "timm")
    if variant == "cls":  # nothing folded: the very tensors come back
        original, back = read_model_tensors(ckpt), read_model_tensors(imported)
        assert all(torch.equal(original[k], back[k]) for k in original)
    second = export_folder(imported, tmp_path / "b", "timm")
    for name in ("config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_cli_round_trip_and_config_checks(trained, tmp_path, capsys):
    """`ckpt export --format timm` / `ckpt import` of the folder; a folder whose config
    differs in a field the tensor shapes do not show (num_heads) is refused naming it."""
    variant, cfg, ckpt = trained
    if variant != "cls":
        pytest.skip("one variant is enough for the command line")
    out = tmp_path / "timm"
    assert cli_main(["ckpt", "export", str(ckpt), str(out), "--format", "timm"]) == 0
    recipe = [str(RECIPE), *TINY, TIMM_EPS]
    assert cli_main(["ckpt", "import", str(out), str(tmp_path / "c"), "--config", *recipe]) == 0
    config = json.loads((out / "config.json").read_text())
    config["model_args"]["num_heads"] = 4
    (out / "config.json").write_text(json.dumps(config))
    assert cli_main(["ckpt", "import", str(out), str(tmp_path / "d"), "--config", *recipe]) == 2
    assert "model_args.num_heads=4" in capsys.readouterr().err


def test_a_model_saved_by_timm_imports_and_computes_the_same_logits(tmp_path):
    """timm's own save_for_hf folder (img_size as [H, W], model_args only as given, defaults
    for the rest) imports into the configured model; the imported run computes timm's logits."""
    lib = timm()
    cfg = cfg_for(tmp_path / "run", "cls")
    v = cfg.model.vit
    torch.manual_seed(0)
    theirs = lib.create_model("vit_small_patch16_224", pretrained=False, img_size=v.image_size,
                              patch_size=v.patch_size, in_chans=v.in_channels,
                              num_classes=v.num_classes, embed_dim=cfg.model.width,
                              depth=cfg.model.depth, num_heads=cfg.model.num_heads).eval()
    with torch.no_grad():  # timm inits cls_token/pos_embed small and biases at zero: perturb
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    lib.models.save_for_hf(theirs, tmp_path / "saved", safe_serialization=True)
    assert json.loads((tmp_path / "saved/config.json").read_text())["model_args"]["img_size"] \
        == [v.image_size, v.image_size]
    assert folder_format(tmp_path / "saved") == "timm"
    ckpt = import_folder(tmp_path / "saved", tmp_path / "run/checkpoints", cfg, "timm")
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    images = torch.randn(4, v.in_channels, v.image_size, v.image_size)
    with torch.no_grad():
        diff = (theirs(images) - ours.eval()(images)).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize("override, named", [
    ("model.norm_eps=1e-5", "model.norm_eps"),
    ("model.norm=rmsnorm", "model.norm=rmsnorm"),
    ("model.mlp=swiglu", "model.mlp=swiglu"),
    ("model.norm_placement=peri", "model.norm_placement=peri"),
    ("model.mup.enabled=true", "model.mup"),  # base_width 64 != 32: a query multiplier
])
def test_inexpressible_vit_options_are_refused_by_name(override, named):
    cfg = load_config(RECIPE, [*TINY, TIMM_EPS, override])
    with pytest.raises(ExportRefused, match=named.replace(".", r"\.")):
        check_expressible(cfg.model)


def test_norm_eps_must_be_positive():
    with pytest.raises(ValueError, match=r"model\.norm_eps"):
        load_config(RECIPE, [*TINY, "model.norm_eps=0"])


@pytest.mark.parametrize("family", ["vit", "lm", "dit"])
def test_norm_eps_reaches_every_affine_norm(family):
    """model.norm_eps sets every norm with a gain (blocks, qk_norm, Peri-LN, the final norm);
    DiT's affine-free adaLN norms keep DiT's own 1e-6."""
    cfg = load_config(RECIPE, [*TINY, f"model.family={family}", "model.norm_eps=3e-6",
                               "model.qk_norm=true", "model.norm_placement=peri"])
    model = build_model(cfg.model, seed=0, meta=True)
    norms = [m for m in model.modules() if hasattr(m, "eps") and hasattr(m, "weight")]
    affine = [m.eps for m in norms if m.weight is not None]
    assert affine and set(affine) == {3e-6}
    assert {m.eps for m in norms if m.weight is None} <= {1e-6}
