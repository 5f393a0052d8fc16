"""DiT: shapes, adaLN-Zero identity, objective formulas, one-step samplers, sample grids."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pretrain.config import load_config
from pretrain.diffusion.ddpm import DDPMSchedule, make_betas
from pretrain.diffusion.sampling import ddim, euler_flow
from pretrain.models import build_model
from pretrain.models.dit import dit_eval_extras, dit_loss, prediction_error

SMALL = ["model.family=dit", "model.width=32", "model.depth=2", "model.num_heads=2"]


def dit(*overrides: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(load_config(None, [*SMALL, *overrides]).model)


def randomize(model: torch.nn.Module, std: float = 0.1) -> None:
    """Move every weight off its (partly zero) init so each pathway contributes."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))


def digits_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "label": torch.arange(n) % 10,
            "sample_id": torch.arange(n)}


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        (
            "model.norm=rmsnorm",
            "model.norm_placement=peri",
            "model.qk_norm=true",
            "model.sigma_reparam=true",
        ),
        ("model.dit.objective=ddpm", "model.dit.ddpm_schedule=cosine", "model.mlp=swiglu"),
        (
            "model.dit.timestep_sampling=logit_normal",
            "model.dit.in_channels=4",
            "model.dit.image_size=4",
            "model.dit.patch_size=1",
        ),
    ],
)
def test_forward_backward_shapes_and_dtypes(overrides):
    model = dit(*overrides)
    randomize(model)
    c, s = model.in_channels, model.cfg.dit.image_size
    x = torch.randn(3, c, s, s)
    out = model(x, torch.tensor([0.0, 500.0, 999.0]), torch.tensor([0, 9, 10]))
    assert out.shape == x.shape and out.dtype == torch.float32
    batch = {"image": x, "label": torch.tensor([1, 2, -100]), "sample_id": torch.arange(3)}
    model.train()
    loss, stats = dit_loss(model, batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and int(stats["count"]) == 2
    assert all(p.grad is not None for p in model.parameters())


def test_adaln_zero_fresh_model_is_identity_on_the_residual_stream():
    model = dit("model.depth=3")
    h = torch.randn(4, model.num_patches, 32)
    c = model.condition(torch.tensor([1.0, 10.0, 100.0, 900.0]), torch.tensor([0, 3, 7, 10]))
    for block in model.blocks:
        assert torch.equal(block(h, c), h)
    out = model(torch.randn(4, 1, 8, 8), torch.zeros(4), torch.zeros(4, dtype=torch.long))
    assert torch.count_nonzero(out) == 0
    assert all(
        torch.count_nonzero(p) == 0
        for n, p in model.named_parameters()
        if n in model.zero_init_param_names()
    )


def test_flow_matching_loss_at_known_pair_equals_formula():
    model = dit()
    randomize(model)
    model.eval()
    x0, noise = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([0.25, 0.8]), torch.tensor([3, 5])
    with torch.no_grad():
        v = model((1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise, 1000 * t, y)
        expected = ((v - (noise - x0)) ** 2).mean(dim=(1, 2, 3))
        assert torch.allclose(prediction_error(model, x0, noise, t, y), expected, atol=1e-6)
    # A fresh model predicts zero velocity: the loss is |noise - x0|^2, whatever t.
    fresh = dit()
    err = prediction_error(
        fresh,
        torch.zeros(3, 1, 8, 8),
        torch.full((3, 1, 8, 8), 2.0),
        torch.tensor([0.1, 0.5, 0.9]),
        y[:1].repeat(3),
    )
    assert torch.allclose(err, torch.full((3,), 4.0))


def test_ddpm_noise_prediction_loss_uses_the_forward_process():
    model = dit("model.dit.objective=ddpm", "model.dit.ddpm_schedule=cosine")
    randomize(model)
    model.eval()
    x0, noise, y = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    u = torch.tensor([0.1, 0.7])
    sched = DDPMSchedule("cosine", 1000)
    t = torch.tensor([100, 700])
    abar = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t.float(), y)
        expected = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        assert torch.allclose(prediction_error(model, x0, noise, u, y), expected, atol=1e-5)


def test_sampler_must_fit_the_objective():
    with pytest.raises(ValueError, match="does not fit"):
        dit("model.dit.objective=ddpm", "model.dit.sampler=euler")


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_ddpm_samplers_produce_finite_images(sampler):
    from pretrain.models.dit import sample_images

    model = dit(
        "model.dit.objective=ddpm", f"model.dit.sampler={sampler}", "model.dit.sample_steps=5"
    )
    randomize(model, 0.02)
    model.eval()
    a, b = (sample_images(model, torch.tensor([1, 2, 3]), seed=4) for _ in range(2))
    assert a.shape == (3, 1, 8, 8) and torch.isfinite(a).all() and torch.equal(a, b)


def test_schedules():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    abar = DDPMSchedule("cosine", 1000).alphas_cumprod
    assert abar[0] > 0.999 and abar[-1] < 1e-4 and bool((abar[1:] < abar[:-1]).all())


def test_one_step_samplers_reduce_to_closed_forms():
    model = dit()
    randomize(model)
    model.eval()
    noise, y, w, null = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), 3.0, 10
    with torch.no_grad():

        def guided(time):
            cond = model(noise, torch.full((4,), time), y)
            uncond = model(noise, torch.full((4,), time), torch.full_like(y, null))
            return uncond + w * (cond - uncond)

        assert torch.allclose(
            euler_flow(model, noise, y, 1, w, null), noise - guided(1000.0), atol=1e-5
        )
        sched = DDPMSchedule("linear", 1000)
        a = sched.alphas_cumprod[-1].item()
        x0 = (noise - math.sqrt(1 - a) * guided(999.0)) / math.sqrt(a)
        assert torch.allclose(ddim(model, sched, noise, y, 1, w, null), x0, rtol=1e-4, atol=1e-3)


def test_flops_per_sample_matches_flop_counter():
    model = dit("model.width=48", "model.depth=3", "model.num_heads=4")
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 1, 8, 8), torch.tensor([10.0]), torch.tensor([3]))
    assert model.flops_per_sample() == 3 * counter.get_total_flops()


def test_eval_extras_write_a_png_grid(tmp_path):
    model = dit(
        "model.dit.samples_per_class=3", "model.dit.sample_steps=2", "model.dit.num_classes=4"
    )
    randomize(model)
    model.eval()
    with torch.no_grad():
        out = dit_eval_extras(model, digits_batch(4), 7, tmp_path)
    grid = out["image/samples"]
    assert grid.dtype == torch.uint8 and grid.shape == (3, 4 * 33 + 1, 3 * 33 + 1)
    png = Image.open(tmp_path / "step_00000007.png")
    assert png.size == (3 * 33 + 1, 4 * 33 + 1)
    assert torch.equal(torch.from_numpy(__import__("numpy").array(png)).permute(2, 0, 1), grid)


def test_loss_and_sampler_reach_the_model_through_ddp(tmp_path):
    """Under DDP the loss and the eval hook get the wrapper; they read the config through it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pretrain.models import get_family

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = DistributedDataParallel(
            dit(
                "model.attn_entropy=true",
                "model.dit.sample_steps=2",
                "model.dit.samples_per_class=1",
            )
        )
        loss, _ = dit_loss(model.train(), digits_batch())
        loss.backward()
        with torch.no_grad():
            out = get_family("dit").eval_extras(model.eval(), digits_batch(), 3, tmp_path)
    finally:
        dist.destroy_process_group()
    assert out["image/samples"].shape == (3, 10 * 33 + 1, 34)
    assert out["attn_entropy/layer0_mean"] > 0 and (tmp_path / "step_00000003.png").exists()
