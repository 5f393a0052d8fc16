"""DiT's learned variance (model.dit.learn_sigma; Improved DDPM): the VLB term against a direct
computation, the hybrid loss and its stop-gradient, the sampler's variance bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pretrain.config import ConfigError, load_config
from pretrain.diffusion.ddpm import DDPMSchedule
from pretrain.diffusion.learned_variance import VLB_WEIGHT, GaussianChain, vlb_bits_per_dim
from pretrain.diffusion.sampling import ddim, ddpm_learned_variance
from pretrain.models.dit import prediction_error, sample_images
from tests.test_dit import dit, randomize

LEARN = ["model.dit.objective=ddpm", "model.dit.learn_sigma=true", "model.dit.ddpm_steps=50",
         "model.dit.sampler=ddpm", "model.dit.sample_steps=7"]


def posterior(abar_prev: float, beta: float, x0: torch.Tensor, xt: torch.Tensor
              ) -> tuple[torch.Tensor, float]:
    """q(x_{t-1} | x_t, x_0) by Gaussian conditioning: x_{t-1} ~ N(sqrt(abar_prev) x0,
    1 - abar_prev) and x_t | x_{t-1} ~ N(sqrt(1 - beta) x_{t-1}, beta)."""
    precision = 1 / (1 - abar_prev) + (1 - beta) / beta
    mean = (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * xt / beta)
    return mean / precision, 1 / precision


def test_vlb_term_equals_the_kl_and_the_discretized_nll_computed_directly():
    schedule = DDPMSchedule("linear", 20)
    chain = GaussianChain(schedule.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    n = 5
    x0 = torch.rand(n, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x0[:, 0, 0, 0], x0[:, 0, 0, 1] = -1.0, 1.0  # the open-ended edge bins
    t = torch.tensor([0, 1, 7, 19, 0])
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=g,
                                                            dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    got = vlb_bits_per_dim(chain, x0, xt, t, eps, v)

    betas, abars = schedule.betas.tolist(), schedule.alphas_cumprod.tolist()
    for i, step in enumerate(t.tolist()):
        a, beta = abars[step], betas[step]
        x0_hat = (xt[i] - math.sqrt(1 - a) * eps[i]) / math.sqrt(a)
        a_prev = abars[step - 1] if step > 0 else 1.0
        s = max(step, 1)  # beta~ of step 0 (zero) is clipped to step 1's
        tilde = betas[s] * (1 - abars[s - 1]) / (1 - abars[s])
        log_var = (v[i] + 1) / 2 * math.log(beta) + (1 - v[i]) / 2 * math.log(tilde)
        std = (0.5 * log_var).exp()
        if step == 0:  # the model's mean at t = 0 is its x0 estimate
            model = Normal(x0_hat, std)
            upper = torch.where(x0[i] > 0.999, torch.ones_like(x0[i]),
                                model.cdf(x0[i] + 1 / 255))
            lower = torch.where(x0[i] < -0.999, torch.zeros_like(x0[i]),
                                model.cdf(x0[i] - 1 / 255))
            want = -(upper - lower).log().mean() / math.log(2)
        else:
            true_mean, true_var = posterior(a_prev, beta, x0[i], xt[i])
            model_mean, _ = posterior(a_prev, beta, x0_hat, xt[i])
            kl = kl_divergence(Normal(true_mean, math.sqrt(true_var)), Normal(model_mean, std))
            want = kl.mean() / math.log(2)
        assert got[i].item() == pytest.approx(want.item(), rel=1e-6, abs=1e-9), step


def test_hybrid_loss_trains_the_mean_by_mse_alone():
    """loss = mse(eps) + 0.001 * T * L_t; L_t reaches only the variance channels."""
    model = dit(*LEARN)
    randomize(model, 0.05)
    d = model.cfg.dit
    out: list[torch.Tensor] = []

    def keep(module, args, output):
        output.retain_grad()
        out.append(output)

    model.register_forward_hook(keep)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise, u = torch.randn(x0.shape, generator=g), torch.tensor([0.0, 0.1, 0.5, 0.99])
    labels = torch.tensor([1, 2, 3, 10])
    per_sample = prediction_error(model, x0, noise, u, labels)
    per_sample.sum().backward()
    pred = out[0].detach()
    assert pred.shape == (4, 2, 8, 8)
    eps, v = pred.chunk(2, dim=1)
    mse = (eps - noise).pow(2).flatten(1).mean(1)
    schedule = DDPMSchedule(d.ddpm_schedule, d.ddpm_steps)
    t = (u * d.ddpm_steps).long()
    xt = schedule.q_sample(x0, noise, t)
    vlb = vlb_bits_per_dim(GaussianChain(schedule.alphas_cumprod), x0, xt, t, eps, v)
    torch.testing.assert_close(per_sample, mse + VLB_WEIGHT * d.ddpm_steps * vlb)
    grad_eps, grad_v = out[0].grad.chunk(2, dim=1)
    torch.testing.assert_close(grad_eps, 2 * (eps - noise) / eps[0].numel())  # mse's only
    assert grad_v.abs().sum() > 0


def test_learned_log_variance_spans_beta_tilde_to_beta():
    chain = GaussianChain(DDPMSchedule("linear", 30).alphas_cumprod)
    i = torch.arange(30)
    low, high = chain.model_log_variance(-torch.ones(30), i), chain.model_log_variance(
        torch.ones(30), i)
    torch.testing.assert_close(high, chain.betas.log().float())
    torch.testing.assert_close(low[1:], (chain.posterior_variance[1:]).log().float())
    mid = chain.model_log_variance(torch.rand(30) * 2 - 1, i)
    assert bool(((low <= mid + 1e-6) & (mid <= high + 1e-6)).all())


def constant_output(eps: float, v: float):
    """A learn_sigma DiT that outputs eps and v everywhere (adaLN-Zero: only the output bias
    is nonzero), so the sampler's variance is pinned to one end of its range."""
    model = dit(*LEARN)
    with torch.no_grad():
        model.final.linear.bias.view(2, -1)[0].fill_(eps)
        model.final.linear.bias.view(2, -1)[1].fill_(v)
    return model.eval()


@pytest.mark.parametrize("v", [-1.0, 1.0])
def test_learned_variance_sampler_at_its_bounds(v):
    """v = -1: each step's variance is beta~ of the respaced chain, i.e. DDIM with eta = 1;
    v = +1: the chain's beta, 1 - abar_t / abar_prev, around the same mean."""
    model = constant_output(0.3, v)
    schedule = DDPMSchedule("linear", 50)
    noise, y = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(3)

    def eps_only(x, time, labels):
        return model(x, time, labels)[:, :1]

    got = ddpm_learned_variance(model, schedule, noise, y, 7, 1.0, 10,
                                generator=torch.Generator().manual_seed(5))
    if v == -1.0:
        want = ddim(eps_only, schedule, noise, y, 7, 1.0, 10, eta=1.0,
                    generator=torch.Generator().manual_seed(5))
    else:
        g = torch.Generator().manual_seed(5)
        timesteps = torch.linspace(49, 0, 7).round().long().tolist()
        abar, x = schedule.alphas_cumprod, noise.clone()
        for k, step in enumerate(timesteps):
            a_t = float(abar[step])
            a_prev = float(abar[timesteps[k + 1]]) if k + 1 < len(timesteps) else 1.0
            x0 = (x - math.sqrt(1 - a_t) * 0.3) / math.sqrt(a_t)
            tilde = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - tilde, 0.0)) * 0.3
            if k + 1 < len(timesteps):
                x = x + math.sqrt(1 - a_t / a_prev) * torch.randn(x.shape, generator=g)
        want = x
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_sample_grid_with_learned_variance_is_finite_and_reproducible():
    model = dit(*LEARN)
    randomize(model, 0.02)
    model.eval()
    a, b = (sample_images(model, torch.tensor([1, 2]), seed=4) for _ in range(2))
    assert a.shape == (2, 1, 8, 8) and torch.isfinite(a).all() and torch.equal(a, b)
    model.cfg.dit.sampler = "ddim"  # deterministic: reads the noise channels only
    assert sample_images(model, torch.tensor([1, 2]), seed=4).shape == (2, 1, 8, 8)


def test_learn_sigma_is_refused_with_flow_matching_in_one_line():
    with pytest.raises(ConfigError, match="learn_sigma needs model.dit.objective=ddpm") as e:
        load_config(None, ["model.family=dit", "model.dit.learn_sigma=true"])
    assert "\n" not in str(e.value)
