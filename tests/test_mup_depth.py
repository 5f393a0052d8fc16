"""The depth rule (depth-muP / CompleteP, pretrain/models/parametrization.py): off it changes
nothing, at the base depth it is the identity, away from it each branch, block lr and block eps
follow (L/L_base)^-α, and the coordinate check sees the residual stream's change flat in depth
under the rule and growing without it."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch

from pretrain.config import load_config
from pretrain.models.mup_config import MupConfig
from pretrain.models.parametrization import in_residual_block, residual_mult
from pretrain.mup.coord_check import RESIDUAL_CHANGE, run_coord_check, verdict
from pretrain.mup.runner import variant
from pretrain.mup.transfer import optima, read_rows, run_transfer
from pretrain.optim import canonical_name, set_lr
from tests.conftest import REPO, TINY, subprocess_env
from tests.test_mup_families import RECIPES, built, family_cfg
from tests.test_mup_fixes import forward

FAMILIES = sorted(RECIPES)
WIDE = ["model.width=64", "model.mup.base_width=32", "model.mup.enabled=true", "model.bias=true"]


def groups(optimizer) -> list[tuple]:
    return [(g["lr_mult"], g["wd_mult"], g["eps"], g["weight_decay"], len(g["params"]))
            for g in optimizer.param_groups]  # fmt: skip


def group_of(optimizer, param) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def step_once(model, optimizer, cfg) -> None:
    set_lr(optimizer, 1e-2)
    forward(model, cfg).float().square().mean().backward()
    optimizer.step()


def assert_same_run(cfg_a, cfg_b) -> None:
    """The same initial values, forward multipliers, optimizer groups and first update."""
    (a, opt_a), (b, opt_b) = built(cfg_a), built(cfg_b)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name
    assert [m.residual_mult for m in a.blocks] == [m.residual_mult for m in b.blocks]
    assert groups(opt_a) == groups(opt_b)
    step_once(a, opt_a, cfg_a)
    step_once(b, opt_b, cfg_b)
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("family", FAMILIES)
def test_off_and_at_the_base_depth_the_rule_changes_nothing(family):
    """depth_alpha 0 (the default) whatever base_depth says, and depth_alpha 1 at depth ==
    base_depth: bit for bit today's muP (same draws, same groups, same first AdamW step)."""
    today = family_cfg(family, *WIDE, "model.depth=3")
    assert today.model.mup.depth_alpha == 0.0
    assert_same_run(today, family_cfg(family, *WIDE, "model.depth=3", "model.mup.base_depth=1"))
    for alpha in (0.5, 1.0):
        at_base = family_cfg(family, *WIDE, "model.depth=3", f"model.mup.depth_alpha={alpha}",
                             "model.mup.base_depth=3")  # fmt: skip
        assert_same_run(today, at_base)
    sp = family_cfg(family, "model.depth=3", "model.mup.depth_alpha=1", "model.mup.base_depth=1")
    assert_same_run(family_cfg(family, "model.depth=3"), sp)  # SP ignores the muP depth rule


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_branch_lr_and_eps_follow_the_depth_multiplier(family, alpha):
    """depth 8, base depth 2 (m_L = 4): branch r = 4^-α; block parameters' lr × 4^(α-1) on top
    of the width rule, eps × 4^-α, weight decay unchanged; the rest untouched."""
    common = [*WIDE, "model.depth=8"]
    plain = family_cfg(family, *common)
    cfg = family_cfg(family, *common, f"model.mup.depth_alpha={alpha}", "model.mup.base_depth=2")
    (model, opt), (plain_model, opt_plain) = built(cfg), built(plain)
    assert residual_mult(cfg.model) == 4**-alpha
    assert {b.residual_mult for b in model.blocks} == {4**-alpha}
    plain_params = dict(plain_model.named_parameters())
    eps = cfg.optim.eps
    for name, p in model.named_parameters():
        g, ref = group_of(opt, p), group_of(opt_plain, plain_params[name])
        block = in_residual_block(canonical_name(name))
        assert block == name.startswith("blocks.")
        assert g["lr_mult"] == pytest.approx(ref["lr_mult"] * (4 ** (alpha - 1) if block else 1))
        assert g["eps"] == pytest.approx(eps * (4**-alpha if block else 1.0))
        assert g["wd_mult"] == ref["wd_mult"] and g["weight_decay"] == ref["weight_decay"]
    assert any(not in_residual_block(n) for n, _ in model.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_branch_multiplier_scales_each_residual_branch(family):
    """The rule's model computes what the plain model computes with every branch's output
    projection (attention proj, MLP fc2: weight and bias) scaled by r: the fold the HF and
    diffusers exports write."""
    common = [*WIDE, "model.depth=4"]
    cfg = family_cfg(family, *common, "model.mup.depth_alpha=1", "model.mup.base_depth=2")
    (model, _), (plain, _) = built(cfg), built(family_cfg(family, *common))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))  # adaLN-Zero starts at zero
            q.copy_(p)
            if name.endswith(("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight",
                              "mlp.fc2.bias")):  # fmt: skip
                q.mul_(0.5)
        out, ref = forward(model, cfg), forward(plain, cfg)
        for block in model.blocks:
            block.residual_mult = 1.0
        unscaled = forward(model, cfg)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, unscaled, atol=1e-3)


def test_bad_depth_settings_name_the_key():
    with pytest.raises(ValueError, match=r"model\.mup\.depth_alpha must be in \[0, 1\]"):
        MupConfig(depth_alpha=1.5, base_depth=2)
    with pytest.raises(ValueError, match=r"model\.mup\.base_depth must be > 0"):
        MupConfig(depth_alpha=1.0)
    with pytest.raises(ValueError, match="model.mup.base_depth"):
        load_config(REPO / "configs/mup_lm_bytes.yaml", ["model.mup.depth_alpha=0.5"])


def test_variants_name_the_depth_rule_and_keep_the_recipes_base_depth():
    cfg = load_config(REPO / "configs/mup_lm_bytes.yaml", [])
    for name, alpha in (("mup", 0.0), ("depth-mup", 0.5), ("completep", 1.0)):
        v = variant(cfg, 64, name, depth=8)
        assert (v.model.depth, v.model.mup.depth_alpha, v.model.mup.base_depth) == (8, alpha, 2)
        assert v.model.mup.enabled
    assert not variant(cfg, 64, "sp", depth=8).model.mup.enabled
    pinned = load_config(REPO / "configs/mup_lm_bytes.yaml", ["model.mup.base_depth=4"])
    assert variant(pinned, 64, "completep", depth=8).model.mup.base_depth == 4


LM_DEPTH = ["data.num_workers=0", "model.num_heads=2", "model.mup.base_width=32",
            "optim.lr=8e-3", "run.seed=0"]  # fmt: skip


def test_depth_coord_check_grows_without_the_rule_and_not_with_it():
    """Width 32, depths 2-8, 4 steps: the residual stream's change since init grows about
    linearly in depth with muP's width rules alone (each block's update is Θ(lr)); under
    depth-muP and CompleteP it stays within depth^±0.3 (one init at width 32 is noisy: run
    seeds 0 and 7 gave -0.05 / +0.22 for depth-muP, -0.28 / -0.15 for CompleteP, +0.74 / +1.03
    without the rule). Embeddings and logits are depth-stable throughout."""
    cfg = load_config(REPO / "configs/mup_lm_bytes.yaml", LM_DEPTH)
    records = run_coord_check(cfg, [32], 4, seeds=1, depths=[2, 4, 8],
                              parametrizations=("mup", "depth-mup", "completep"))  # fmt: skip
    assert {r["depth"] for r in records} == {2, 4, 8} and {r["width"] for r in records} == {32}
    results = {(v.parametrization, v.layer): v for v in verdict(records, tolerance=0.15)}
    assert {layer for _, layer in results} == {"tok_embed", "residual", RESIDUAL_CHANGE, "logits"}
    assert all(v.axis == "depth" for v in results.values())
    grows = results[("mup", RESIDUAL_CHANGE)].slope
    assert grows > 0.5 and not results[("mup", "residual")].ok
    for param in ("depth-mup", "completep"):
        change = results[(param, RESIDUAL_CHANGE)].slope
        assert abs(change) < 0.3 and change < grows - 0.5, (param, change)
    for param in ("mup", "depth-mup", "completep"):
        assert results[(param, "tok_embed")].ok and results[(param, "logits")].ok, param


def test_depth_transfer_rows_carry_the_depth_and_an_old_csv_resumes(tmp_path):
    """A depth sweep's rows and optima are per depth; a CSV written before the depth column
    resumes (its rows read at the recipe's depth) and is rewritten with the column."""
    cfg = load_config(REPO / "configs/vit_digits.yaml",
                      [*TINY, "parallel.backend=single", "model.mup.base_width=16"])  # fmt: skip
    csv_path = tmp_path / "transfer.csv"
    rows = run_transfer(cfg, [16], [1e-3], steps=2, csv_path=csv_path,
                        parametrizations=("completep",), depths=[1, 2])  # fmt: skip
    assert [(r["width"], r["depth"]) for r in rows] == [(16, 1), (16, 2)]
    assert set(optima(rows)) == {("completep", 1), ("completep", 2)}
    old = tmp_path / "old.csv"
    fields = ["parametrization", "width", "lr", "seed", "steps", "train_loss", "val_loss"]
    with open(old, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({**rows[0], "parametrization": "mup", "train_loss": 1.5})
    depth = cfg.model.depth
    again = run_transfer(cfg, [16], [1e-3], steps=2, csv_path=old, parametrizations=("mup",))
    assert [(r["depth"], r["train_loss"]) for r in again] == [(depth, 1.5)]  # not retrained
    assert read_rows(old) == again and "depth" in old.read_text().splitlines()[0]
    assert all(math.isfinite(r["val_loss"]) for r in rows)


def test_depth_sweep_at_two_widths_is_refused_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "pretrain", "mup", "coord-check", "configs/mup_lm_bytes.yaml",
           "--widths", "32", "64", "--depths", "2", "4", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "a depth sweep runs at one width, got widths [32, 64]" in proc.stderr


EXPORTS = {  # family -> (recipe, overrides, transformers class)
    "vit": ("configs/vit_digits.yaml", [*TINY, "model.mup.base_width=16"],
            "ViTForImageClassification"),
    "lm": ("configs/lm_bytes.yaml", ["model.width=32", "model.num_heads=2", "model.bias=false",
                                     "model.lm.seq_len=16", "data.seq_len=16",
                                     "data.global_batch_size=4", "model.mup.base_width=16"],
           "LlamaForCausalLM"),
}  # fmt: skip
EXPORTS["lm_peri"] = (EXPORTS["lm"][0], [*EXPORTS["lm"][1], "model.norm_placement=peri"],
                      "Gemma2ForCausalLM")  # r after each output norm: folded into its gain


@pytest.mark.parametrize("family", sorted(EXPORTS))
def test_hf_export_folds_the_branch_multiplier_exactly(family, tmp_path):
    """A CompleteP model at 3x its base depth (r = 1/3) exported to transformers computes our
    logits (the multiplier folded into each branch's output projection, weight and bias, or
    under Peri-LN into the output norm's gain)."""
    from pretrain.checkpoint import read_model_tensors
    from pretrain.interop import export_folder
    from pretrain.models import build_model
    from pretrain.trainer import train
    from tests.interop_libs import transformers

    recipe, overrides, arch = EXPORTS[family]
    cfg = load_config(REPO / recipe, [
        *overrides, "model.depth=3", "model.mup.enabled=true", "model.mup.depth_alpha=1",
        "model.mup.base_depth=1", "parallel.backend=single", "schedule.steps=2",
        "schedule.warmup_steps=1", "checkpoint.every_steps=2", "logging.eval_every_steps=0",
        f"run.dir={tmp_path / 'run'}"])  # fmt: skip
    train(cfg)
    ckpt = tmp_path / "run/checkpoints/step_00000002"
    folder = export_folder(ckpt, tmp_path / "hf", "hf")
    hf = getattr(transformers(), arch).from_pretrained(folder, local_files_only=True).eval()
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    assert {b.residual_mult for b in ours.blocks} == {1 / 3}
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if family == "vit":
            v = cfg.model.vit
            x = torch.randn(4, v.in_channels, v.image_size, v.image_size, generator=g)
            diff = (hf(pixel_values=x).logits - ours.eval()(x)).abs().max().item()
        else:
            tokens = torch.randint(0, 256, (2, 16), generator=g)
            diff = (hf(tokens).logits - ours.eval()(tokens)).abs().max().item()
    assert diff <= 1e-5, f"{family}: max abs logit difference {diff}"


def test_diffusers_export_folds_the_branch_multiplier_exactly(tmp_path):
    """The DiT at 3x its base depth under CompleteP, random weights (std 0.2: the adaLN gates
    far from zero, so every branch matters): DiTTransformer2DModel predicts what we do."""
    from safetensors.torch import save_file

    from pretrain.checkpoint import read_model_tensors
    from pretrain.checkpoint.convert import import_safetensors
    from pretrain.interop import export_folder
    from pretrain.models import build_model
    from tests.interop_libs import diffusers

    cfg = load_config(REPO / "configs/dit_digits.yaml", [
        *TINY, "data.name=digits", "parallel.backend=single", "model.dit.time_freq_shift=1",
        "model.mup.enabled=true", "model.mup.base_width=16", "model.depth=3",
        "model.mup.depth_alpha=1", "model.mup.base_depth=1", f"run.dir={tmp_path / 'run'}"])
    g = torch.Generator().manual_seed(5)
    weights = {n: torch.randn(p.shape, generator=g) * 0.2
               for n, p in build_model(cfg.model).named_parameters()}
    save_file(weights, str(tmp_path / "random.safetensors"))
    ckpt = import_safetensors(tmp_path / "random.safetensors", tmp_path / "run/checkpoints", cfg)
    folder = export_folder(ckpt, tmp_path / "dit", "diffusers")
    theirs = diffusers().DiTTransformer2DModel.from_pretrained(folder).eval()
    ours = build_model(cfg.model)
    ours.load_state_dict(read_model_tensors(ckpt))
    assert {b.residual_mult for b in ours.blocks} == {1 / 3}
    d = cfg.model.dit
    x = torch.randn(3, d.in_channels, d.image_size, d.image_size, generator=g)
    t, labels = torch.tensor([0.0, 250.0, 999.0]), torch.tensor([0, 3, d.num_classes])
    with torch.no_grad():
        want = ours.eval()(x, t, labels)
        got = theirs(x, timestep=t, class_labels=labels).sample
    assert (got - want).abs().max().item() <= 1e-5
