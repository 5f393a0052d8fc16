"""Learned reverse-process variance (Nichol & Dhariwal 2021, "Improved DDPM"; DiT's learn_sigma).

The network emits, next to eps, a value v per pixel; the reverse step's variance interpolates
between the two natural choices in log space:

    log sigma_t^2 = frac log beta_t + (1 - frac) log beta~_t,   frac = (v + 1) / 2

(beta~_t: the posterior q(x_{t-1} | x_t, x_0)'s variance). v is trained only by the variational
bound term L_t: the KL between the true posterior and the model's Gaussian step (t > 0), or the
negative log-likelihood of x_0 under a Gaussian discretized into 2/255 bins (t = 0), in bits
per dimension. The mean enters L_t through a stop-gradient: L_simple alone trains eps.
The hybrid loss is L_simple + lambda * T * L_t (T * L_t is the uniform-t estimate of the whole
bound; lambda = 1e-3), which is DiT's `mse + vb` at T = 1000.

A `GaussianChain` is one Markov chain given by its cumulative alphas: the training chain (all
T steps) or a respaced sampling chain (the subset of steps a sampler visits), whose betas are
1 - abar_i / abar_{i-1}, as in DiT's and Improved DDPM's respacing.
"""

from __future__ import annotations

import math

import torch

VLB_WEIGHT = 1e-3  # lambda of L_hybrid (Improved DDPM section 3.1)
_LOG2 = math.log(2.0)


class GaussianChain:
    """Forward-process quantities of a chain with cumulative alphas `abar` (float64, steps in
    increasing noise order), indexed by the chain's step i in [0, len)."""

    def __init__(self, abar: torch.Tensor):
        self.abar = abar.to(torch.float64)
        self.abar_prev = torch.cat([self.abar.new_ones(1), self.abar[:-1]])
        self.betas = 1 - self.abar / self.abar_prev
        self.posterior_variance = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        # beta~_0 = 0: its log is clipped to beta~_1, as the papers do (step 0 adds no noise)
        v = self.posterior_variance
        self.posterior_log_variance = (v[1:2] if len(v) > 1 else self.betas[:1]).log()
        self.posterior_log_variance = torch.cat([self.posterior_log_variance, v[1:].log()])
        self.coef_x0 = self.betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.coef_xt = (1 - self.abar_prev) * (1 - self.betas).sqrt() / (1 - self.abar)

    @staticmethod
    def _at(values: torch.Tensor, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = values.to(like.device)[i.long()].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (clipped) log variance of q(x_{i-1} | x_i, x_0)."""
        mean = self._at(self.coef_x0, i, xt) * x0 + self._at(self.coef_xt, i, xt) * xt
        return mean, self._at(self.posterior_log_variance, i, xt)

    def model_log_variance(self, v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """log sigma^2 from the network's v: log beta~ at v = -1, log beta at v = +1."""
        frac = (v + 1) / 2
        max_log = self._at(self.betas.log(), i, v)
        min_log = self._at(self.posterior_log_variance, i, v)
        return frac * max_log + (1 - frac) * min_log

    def p_step(self, xt: torch.Tensor, i: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of the model's p(x_{i-1} | x_i): the posterior mean at the
        x_0 that eps implies (not clipped: latents have no fixed range), the learned variance."""
        abar = self._at(self.abar, i, xt)
        x0 = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
        mean, _ = self.q_posterior(x0, xt, i)
        return mean, self.model_log_variance(v, i)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] quantised to 256 levels under N(mean, e^(2 log_scale)): the
    mass of x's bin of width 2/255, the edge bins open-ended (Ho et al. 2020, eq. 13). The
    exact normal CDF (the papers use a tanh approximation of it)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    delta = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper,
                       torch.where(x > 0.999, log_one_minus_cdf_lower, delta.log()))


def vlb_bits_per_dim(chain: GaussianChain, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                     eps: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample L_t in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
    -log p(x_0|x_1) for t = 0. Pass eps detached (the stop-gradient on the mean)."""
    true_mean, true_log_var = chain.q_posterior(x0, xt, t)
    mean, log_var = chain.p_step(xt, t, eps, v)
    kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / _LOG2
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    nll = nll.flatten(1).mean(1) / _LOG2
    return torch.where(t == 0, nll, kl)
