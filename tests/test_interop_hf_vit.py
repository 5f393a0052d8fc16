"""The ViT leaves and re-enters transformers as ViTForImageClassification
(pretrain/interop/hf_vit.py): same logits (fp32, <= 1e-5) on the same images, and
export -> import -> export writes the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import read_model_tensors
from pretrain.config import load_config
from pretrain.interop import ExportRefused, export_folder, import_folder
from pretrain.interop.hf_vit import check_expressible
from pretrain.models import build_model
from tests.conftest import TINY
from tests.interop_libs import transformers
from tests.interop_vit import VIT_RECIPE as RECIPE
from tests.interop_vit import trained_vit, vit_config

VARIANTS = {"sp": [], "mup_folded": ["model.mup.enabled=true", "model.mup.base_width=16",
                                     "model.mup.output_mult=2.0"]}


def cfg_for(run_dir: Path, variant: str):
    return vit_config(run_dir, *VARIANTS[variant])


@pytest.fixture(scope="module", params=list(VARIANTS))
def trained(request, tmp_path_factory):
    return request.param, *trained_vit(tmp_path_factory, request.param,
                                       *VARIANTS[request.param])


def test_vit_for_image_classification_computes_our_logits(trained, tmp_path):
    variant, cfg, ckpt = trained
    folder = export_folder(ckpt, tmp_path / "hf", "hf")
    lib = transformers()
    hf = lib.ViTForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    v = cfg.model.vit
    images = torch.randn(6, v.in_channels, v.image_size, v.image_size,
                         generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (hf(pixel_values=images).logits - ours.eval()(images)).abs().max().item()
    assert diff <= 1e-5, f"{variant}: max abs logit difference {diff}"


def test_export_import_export_is_bitwise(trained, tmp_path):
    variant, cfg, ckpt = trained
    first = export_folder(ckpt, tmp_path / "a", "hf")
    imported = import_folder(first, tmp_path / "next/checkpoints", cfg_for(tmp_path / "next",
                                                                           variant), "hf")
    if variant == "sp":
        original, back = read_model_tensors(ckpt), read_model_tensors(imported)
        assert all(torch.equal(original[k], back[k]) for k in original)
    second = export_folder(imported, tmp_path / "b", "hf")
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize("override, named", [
    ("model.vit.pooling=mean", "model.vit.pooling=mean"), ("model.norm=rmsnorm", "model.norm"),
    ("model.mlp=swiglu", "model.mlp=swiglu"), ("model.bias=false", "model.bias=false"),
    ("model.qk_norm=true", "model.qk_norm"),
])
def test_inexpressible_vit_options_are_refused_by_name(override, named):
    cfg = load_config(RECIPE, [*TINY, override])
    with pytest.raises(ExportRefused, match=named.replace(".", r"\.")):
        check_expressible(cfg.model)
