"""Training objectives: flow matching on the linear path (SiT) and DDPM epsilon-prediction (DiT).

Flow: x_t = (1 - t) x0 + t eps, the model predicts the velocity v = eps - x0; t in [0, 1] is passed as is,
drawn log-normal (t = s / (1 + s), s = exp(N(0, 1))) or uniform.
DDPM: linear betas 1e-4..0.02 over 1000 steps, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, the model
predicts eps from the integer t (passed as a float). With learn_sigma the second half of the output
channels interpolates the log-variance between beta_t and the posterior variance, trained by the
variational bound with the mean stopped (improved DDPM / DiT's hybrid loss: mse + vb).
Every loss returns one value per sample (B,), in float32.
"""
from __future__ import annotations

import math

import torch

NUM_TIMESTEPS = 1000


def ddpm_betas(steps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """The DiT / ADM linear schedule, float64 (sprintc.diffusion uses the same one)."""
    scale = 1000 / steps
    return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)


class DDPMSchedule:
    """Float64 tables of the schedule; `at(name, t, like)` gathers entries for a batch of integer t."""

    def __init__(self, steps: int = NUM_TIMESTEPS):
        b = ddpm_betas(steps)
        a = torch.cumprod(1 - b, 0)
        a_prev = torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
        self.steps = steps
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = b, a, a_prev
        self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod = a.sqrt(), (1 - a).sqrt()
        self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod = (1 / a).sqrt(), (1 / a - 1).sqrt()
        var = b * (1 - a_prev) / (1 - a)
        self.posterior_variance = var
        # the variance is 0 at t = 0: clip the log to the next value, as ADM does
        self.posterior_log_variance_clipped = torch.log(torch.cat([var[1:2], var[1:]]))
        self.posterior_mean_coef1 = b * a_prev.sqrt() / (1 - a)
        self.posterior_mean_coef2 = (1 - a_prev) * (1 - b).sqrt() / (1 - a)
        self.log_betas = b.log()

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        v = getattr(self, name).to(t.device)[t].to(like.dtype)
        return v.view(-1, *([1] * (like.dim() - 1)))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 bins (ADM's decoder term at t = 0)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x):
    return x.mean(dim=tuple(range(1, x.dim())))


class Objective:
    """`time(B)` draws the global batch's times; `noisy(x0, eps, t)` gives the model input (x_t, t_in);
    `loss(out, x0, x_t, eps, t)` the per-sample loss."""

    def __init__(self, kind: str = "flow", time_sampling: str = "lognormal", learn_sigma: bool = False):
        self.kind, self.time_sampling, self.learn_sigma = kind, time_sampling, learn_sigma
        self.schedule = DDPMSchedule() if kind == "ddpm" else None

    @classmethod
    def from_spec(cls, spec):
        return cls(spec.train.objective, spec.train.time_sampling, spec.model.learn_sigma)

    def time(self, batch: int, generator=None, device=None) -> torch.Tensor:
        if self.kind == "ddpm":
            return torch.randint(0, self.schedule.steps, (batch,), generator=generator, device=device)
        if self.time_sampling == "lognormal":
            s = torch.randn(batch, generator=generator, device=device).exp()
            return s / (1 + s)
        return torch.rand(batch, generator=generator, device=device)

    def noisy(self, x0, eps, t):
        if self.kind == "ddpm":
            s = self.schedule
            x_t = s.at("sqrt_alphas_cumprod", t, x0) * x0 + s.at("sqrt_one_minus_alphas_cumprod", t, x0) * eps
            return x_t, t.float()
        tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        return (1 - tt) * x0 + tt * eps, t

    def loss(self, out, x0, x_t, eps, t) -> torch.Tensor:
        out = out.float()
        c = x0.shape[1]
        if out.shape[1] == 2 * c:  # learn_sigma: [prediction | variance]
            out, var_values = out[:, :c], out[:, c:]
        else:
            var_values = None
        if self.kind == "flow":  # SiT ignores the variance half
            return mean_flat((out - (eps - x0)) ** 2)
        mse = mean_flat((out - eps) ** 2)
        if var_values is None:
            return mse
        return mse + self.vb(out.detach(), var_values, x0, x_t, t)

    def vb(self, eps_pred, var_values, x0, x_t, t) -> torch.Tensor:
        """The variational bound in bits per dim for the learned variance; the mean (eps) is frozen."""
        s = self.schedule
        true_mean = s.at("posterior_mean_coef1", t, x0) * x0 + s.at("posterior_mean_coef2", t, x0) * x_t
        true_logvar = s.at("posterior_log_variance_clipped", t, x0)
        min_log, max_log = true_logvar, s.at("log_betas", t, x0)
        frac = (var_values + 1) / 2
        model_logvar = frac * max_log + (1 - frac) * min_log
        pred_x0 = s.at("sqrt_recip_alphas_cumprod", t, x0) * x_t - s.at("sqrt_recipm1_alphas_cumprod", t, x0) * eps_pred
        model_mean = s.at("posterior_mean_coef1", t, x0) * pred_x0 + s.at("posterior_mean_coef2", t, x0) * x_t
        kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
