"""Diffusion Transformer (Peebles & Xie 2023) with adaLN-Zero conditioning, its training loss
(rectified flow or DDPM) and its evaluation samples.

Input is a patchified image (pixels or precomputed latents: `dit.in_channels`). The condition
c = timestep embedding + class embedding drives, per block, a shift/scale/gate for each
sublayer (adaLN). The modulation layers and the output layer start at zero (adaLN-Zero), so a
fresh block is the identity on the residual stream and a fresh model predicts zero.

muP roles of the conditioning pathway (`param_kinds`): the class table and the first timestep
MLP layer read fixed-size inputs (labels, 256 frequencies) -> embedding; the second timestep
layer and every adaLN modulation map width -> k*width -> hidden; the final patch projection
-> readout (its input is multiplied by `output_mult`, so its bias is not: MuReadout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pretrain.diffusion import flow
from pretrain.diffusion.ddpm import DDPMSchedule
from pretrain.diffusion.grid import make_grid, save_png
from pretrain.diffusion.learned_variance import VLB_WEIGHT, GaussianChain, vlb_bits_per_dim
from pretrain.diffusion.sampling import ddim, ddpm_learned_variance, euler_flow
from pretrain.models.blocks import (
    MLP,
    Attention,
    block_matmul_flops,
    make_norm,
    model_norm,
    patchify,
    resolve_mlp,
    scale_branch,
    unwrap,
)
from pretrain.models.config import ModelConfig
from pretrain.models.parametrization import param_roles

FREQ_DIM = 256  # sinusoidal timestep features fed to the timestep MLP


def timestep_frequencies(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0,
                         shift: int = 0) -> torch.Tensor:
    """[B] float times -> [B, dim] (cos, sin) features at geometrically spaced frequencies
    max_period^(-i / (dim/2 - shift)) (model.dit.time_freq_shift)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * steps / (half - shift))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [grid*grid, width] (half the channels per axis)."""
    if width % 4:
        raise ValueError(
            f"model.width={width} must be divisible by 4 for the DiT position embedding"
        )
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64),
        torch.arange(grid, dtype=torch.float64),
        indexing="ij",
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_shift: int = 0):
        super().__init__()
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_frequencies(t, shift=self.freq_shift)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """x + gate * r * f(modulate(norm(x), shift, scale)) for f = attention, MLP; Peri-LN adds an
    output norm before the gate; r = `residual_mult`, the depth rule's branch multiplier. Norms
    carry no affine parameters: adaLN supplies them."""

    def __init__(self, cfg: ModelConfig, mlp: str):
        super().__init__()
        peri = cfg.norm_placement == "peri"
        self.norm1 = make_norm(cfg.norm, cfg.width, affine=False, eps=1e-6)
        self.attn = Attention(cfg)
        self.attn_out_norm = model_norm(cfg, cfg.width) if peri else nn.Identity()
        self.norm2 = make_norm(cfg.norm, cfg.width, affine=False, eps=1e-6)
        self.mlp = MLP(cfg, mlp)
        self.mlp_out_norm = model_norm(cfg, cfg.width) if peri else nn.Identity()
        self.modulation = nn.Linear(cfg.width, 6 * cfg.width)
        self.residual_mult = 1.0

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, N, D]; c [B, D], the SiLU of the condition."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        r = self.residual_mult
        attn = self.attn_out_norm(self.attn(modulate(self.norm1(x), shift1, scale1)))
        x = x + gate1 * scale_branch(attn, r)
        mlp = self.mlp_out_norm(self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x + gate2 * scale_branch(mlp, r)


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, patch_dim: int):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.width, affine=False, eps=1e-6)
        self.modulation = nn.Linear(cfg.width, 2 * cfg.width)
        self.linear = nn.Linear(cfg.width, patch_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mult: float = 1.0) -> torch.Tensor:
        """`mult`: muP's readout multiplier, on the projection's input (as MuReadout), so the
        bias's effect does not shrink with width."""
        shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale) * mult)


class DiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dit
        if d.image_size % d.patch_size:
            raise ValueError(
                f"model.dit.image_size={d.image_size} is not divisible by patch_size={d.patch_size}"
            )
        if d.sampler != "auto" and (d.sampler == "euler") != (d.objective == "flow"):
            raise ValueError(
                f"model.dit.sampler={d.sampler!r} does not fit objective={d.objective!r} "
                "(flow: euler; ddpm: ddim or ddpm)"
            )
        self.cfg = cfg
        self.patch_size, self.in_channels = d.patch_size, d.in_channels
        self.grid = d.image_size // d.patch_size
        self.num_patches = self.grid**2
        self.patch_dim = d.in_channels * d.patch_size**2
        self.out_channels = d.in_channels * (2 if d.learn_sigma else 1)  # eps (and v)
        self.null_label = d.num_classes
        self.mlp_kind = resolve_mlp(cfg, "gelu")
        self.x_embed = nn.Linear(self.patch_dim, cfg.width)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(cfg.width, self.grid)[None], persistent=False
        )
        self.t_embed = TimestepEmbedder(cfg.width, d.time_freq_shift)
        self.y_embed = nn.Embedding(d.num_classes + 1, cfg.width)  # + the null label
        self.blocks = nn.ModuleList(DiTBlock(cfg, self.mlp_kind) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg, self.out_channels * d.patch_size**2)
        self.output_mult = 1.0  # readout multiplier; muP sets it

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the position table (a meta-device build allocates it empty)."""
        self.pos_embed.copy_(sincos_pos_embed_2d(self.cfg.width, self.grid)[None])

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, C*p*p]."""
        return patchify(images, self.patch_size, self.in_channels, self.cfg.dit.image_size,
                        "model.dit")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, C*p*p] -> [B, C, H, W] (inverse of patchify; C = out_channels)."""
        p, g, c = self.patch_size, self.grid, self.out_channels
        x = x.reshape(x.shape[0], g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def condition(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.t_embed(t) + self.y_embed(labels))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Noisy input [B, C, H, W], time [B] (flow: 1000*t; DDPM: step index), labels [B]
        (num_classes = unconditional) -> prediction [B, C, H, W] (velocity or noise), with
        learn_sigma [B, 2C, H, W]: noise, then the variance interpolation v in channels C..2C.

        Under FSDP2 bf16 mixed precision the float inputs (x and time) arrive in bf16, as with
        autocast elsewhere: time keeps ~3 significant digits; its features are computed in fp32.
        """
        h = self.x_embed(self.patchify(x))
        h = h + self.pos_embed.to(h.dtype)
        c = self.condition(t, labels)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c, self.output_mult))

    def param_kinds(self) -> dict[str, str]:
        """muP role of every parameter (see the module docstring for the conditioning path)."""
        embeddings = {"x_embed.weight", "t_embed.mlp.0.weight", "y_embed.weight"}
        return param_roles(self, embeddings, readouts={"final.linear.weight"})

    def embedding_param_names(self) -> set[str]:
        return {
            "x_embed.weight",
            "x_embed.bias",
            "y_embed.weight",
            "t_embed.mlp.0.weight",
            "t_embed.mlp.0.bias",
        }

    def zero_init_param_names(self) -> set[str]:
        """adaLN-Zero: every modulation and the output projection start at zero."""
        return {
            n
            for n, _ in self.named_parameters()
            if ".modulation." in n or n.startswith("final.linear.")
        }

    def flops_per_sample(self) -> int:
        """Training FLOPs per image: 3x the forward matmuls.

        Counted: patch embedding, the timestep MLP, every block's projections, MLP and attention
        matmuls over all patches plus its adaLN modulation (once per image), the final
        modulation and patch projection. Not counted: norms, softmax, activations, the class
        lookup, biases; nor sampling (classifier-free guidance doubles each sampling forward).
        """
        c, n, w = self.cfg, self.num_patches, self.cfg.width
        fwd = 2 * n * self.patch_dim * w + 2 * (FREQ_DIM * w + w * w)
        fwd += c.depth * (block_matmul_flops(c, n, mlp=self.mlp_kind) + 2 * w * 6 * w)
        fwd += 2 * w * 2 * w + 2 * n * w * self.final.linear.out_features
        return 3 * fwd


def _eval_noise(x0: torch.Tensor, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and a uniform draw per sample seeded by its sample id: evaluation is the same at
    every world size and does not touch the training RNG."""
    noise, u = [], []
    for sid in sample_ids.tolist():
        g = torch.Generator().manual_seed(int(sid) & 0x7FFFFFFF)
        u.append(torch.rand((), generator=g))
        noise.append(torch.randn(x0.shape[1:], generator=g))
    return torch.stack(noise).to(x0.device, x0.dtype), torch.stack(u).to(x0.device)


def prediction_error(
    model: nn.Module, x0: torch.Tensor, noise: torch.Tensor, u: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-sample mean squared error of the objective at data x0, noise and uniform draws u:

    flow: t = time(u), x_t = (1 - t) x0 + t noise, error of model(x_t, 1000 t) against noise - x0;
    ddpm: t = floor(u T), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, error against noise;
    with learn_sigma plus VLB_WEIGHT * T * L_t (pretrain/diffusion/learned_variance.py).
    """
    d = unwrap(model).cfg.dit
    if d.objective == "flow":
        t = flow.time_from_uniform(u, d.timestep_sampling, d.logit_normal_mean, d.logit_normal_std)
        pred = model(flow.interpolate(x0, noise, t), t * flow.TIME_SCALE, labels)
        target = flow.velocity_target(x0, noise)
    else:
        schedule = DDPMSchedule(d.ddpm_schedule, d.ddpm_steps)
        t = (u * d.ddpm_steps).long().clamp(max=d.ddpm_steps - 1)
        xt = schedule.q_sample(x0, noise, t)
        pred = model(xt, t.float(), labels)
        target = noise
        if d.learn_sigma:
            eps, v = pred.float().chunk(2, dim=1)
            mse = (eps - target.float()).pow(2).flatten(1).mean(1)
            chain = GaussianChain(schedule.alphas_cumprod)
            vlb = vlb_bits_per_dim(chain, x0.float(), xt.float(), t, eps.detach(), v)
            return mse + VLB_WEIGHT * d.ddpm_steps * vlb
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def dit_loss(
    model: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean prediction error (velocity or noise) over valid images, plus sums for evaluation.

    Training draws noise, times and the guidance label dropout from the (checkpointed) torch
    RNG; evaluation uses per-sample seeds so its loss is deterministic.
    """
    net = unwrap(model)
    x0, labels = batch["image"], batch["label"]
    valid = labels != -100
    y = torch.where(valid, labels, torch.full_like(labels, net.null_label))
    if model.training:
        noise = torch.randn_like(x0)
        u = torch.rand(x0.shape[0], device=x0.device)
        drop = torch.rand(x0.shape[0], device=x0.device) < net.cfg.dit.class_dropout
        y = torch.where(drop, torch.full_like(y, net.null_label), y)
    else:
        noise, u = _eval_noise(x0, batch["sample_id"])
    per_sample = prediction_error(model, x0, noise, u, y)
    loss_sum = (per_sample * valid).sum()
    count = valid.sum()
    return loss_sum / count.clamp(min=1), {"loss_sum": loss_sum.detach(), "count": count}


@torch.no_grad()
def sample_images(
    model: nn.Module,
    labels: torch.Tensor,
    seed: int = 0,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """Generate one image per label with the configured sampler; noise from `seed` (on CPU, so
    the same on every device and rank)."""
    net = unwrap(model)
    d = net.cfg.dit
    steps = d.sample_steps if steps is None else steps
    scale = d.guidance_scale if guidance_scale is None else guidance_scale
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), d.in_channels, d.image_size, d.image_size, generator=g).to(
        labels.device
    )
    if d.objective == "flow":
        return euler_flow(model, noise, labels, steps, scale, net.null_label)
    schedule = DDPMSchedule(d.ddpm_schedule, d.ddpm_steps)
    if d.learn_sigma and d.sampler == "ddpm":
        return ddpm_learned_variance(model, schedule, noise, labels, steps, scale,
                                     net.null_label, generator=g)
    if d.learn_sigma:  # DDIM is deterministic: the noise channels only
        def eps_only(x, time, y, full=model, c=d.in_channels):
            return full(x, time, y)[:, :c]

        model = eps_only
    return ddim(
        model,
        schedule,
        noise,
        labels,
        steps,
        scale,
        net.null_label,
        eta=1.0 if d.sampler == "ddpm" else 0.0,
        generator=g,
    )


def dit_eval_extras(model: nn.Module, batch: dict, step: int, out_dir: Path | None,
                    decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """A class-conditional sample grid (one row per class) -> PNG under out_dir + TensorBoard.
    `decode` maps sampled latents to pixels in [-1, 1] (a VAE's decoder), shown at their own
    resolution; without it the samples are shown as they are, upscaled for viewing."""
    d = unwrap(model).cfg.dit
    device = batch["image"].device
    labels = torch.arange(d.num_classes, device=device).repeat_interleave(d.samples_per_class)
    images = sample_images(model, labels)
    if decode is not None:
        grid = make_grid(decode(images), rows=d.num_classes, upscale=1)
    else:
        grid = make_grid(images, rows=d.num_classes)
    if out_dir is not None:
        save_png(grid, Path(out_dir) / f"step_{step:08d}.png")
    return {"image/samples": grid}
