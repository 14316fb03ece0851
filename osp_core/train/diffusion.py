"""The text-to-video training objective of Open-Sora-Plan v1.1.0 (IDDPM, as in DiT/Latte).

1000 linear betas from 1e-4 to 2e-2 (diffusers' `DDPMScheduler` holds the schedule and adds the
noise), uniform timesteps, epsilon prediction with MSE, and for models that also predict
variance channels (`learn_sigma`, out_channels = 2C) the variational-bound term of Nichol &
Dhariwal with the "learned range" parametrisation, computed on a detached mean so it only
trains the variance: the "hybrid" loss, `loss = mse + vb`. Tables are float64, like the original.

Two options beyond the original, both off by default (the v1.1.0 objective): a share of the
timesteps drawn from a band (`timestep_band_fraction`, `timestep_band`; a high-noise one here) and a
per-timestep weight on the MSE (`loss_weighting="inverse_snr"`: the x0 error, clipped). Why:
under the epsilon MSE an x0 error at timestep t costs SNR(t) times as much as it does in x0
terms, which is below 0.03 over t = 600..1000, where a sample's layout and motion are decided.
The built-in shapes model learned color and shape from its captions and ignored the direction
word; its stage 2 (both options) taught it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler

from .plan import check_objective_options


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of `x` in [-1, 1] under a Gaussian discretised into 256 bins (nats, elementwise)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch dim; with `mask` (broadcastable to x), over kept elements only."""
    dims = tuple(range(1, x.ndim))
    if mask is None:
        return x.mean(dim=dims)
    mask = mask.to(x.dtype).expand_as(x)
    return (x * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1.0)


class GaussianDiffusionObjective:
    """`training_losses(model_fn, x_start)` -> per-sample `loss`, `mse`, `vb` (and the timesteps)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        learn_sigma: bool = True,
        timestep_band_fraction: float = 0.0,
        timestep_band: tuple[int, int] = (500, 900),
        loss_weighting: str = "uniform",
        max_loss_weight: float = 20.0,
    ) -> None:
        check_objective_options(num_train_timesteps, timestep_band_fraction, timestep_band, loss_weighting, max_loss_weight)
        lo, hi = timestep_band
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="linear",
            prediction_type="epsilon",
            variance_type="learned_range" if learn_sigma else "fixed_small",
            clip_sample=False,
        )
        self.num_timesteps = num_train_timesteps
        self.learn_sigma = learn_sigma
        self.timestep_band_fraction = timestep_band_fraction
        self.timestep_band = (lo, hi)
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        cumprod = torch.cumprod(alphas, dim=0)
        cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), cumprod[:-1]])
        posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
        self.tables = {
            "sqrt_alphas_cumprod": cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / cumprod - 1.0).sqrt(),
            # the variance at t=0 is 0: clip its log to the t=1 value, as IDDPM does
            "posterior_log_variance_clipped": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef1": betas * cumprod_prev.sqrt() / (1.0 - cumprod),
            "posterior_mean_coef2": (1.0 - cumprod_prev) * alphas.sqrt() / (1.0 - cumprod),
            "log_betas": torch.log(betas),
        }
        if loss_weighting == "inverse_snr":
            # an eps error e at SNR s is an x0 error e / sqrt(s): weighting the eps MSE by 1/s makes
            # it the x0 MSE. Clipped below at 1 (low noise keeps the original weight) and above at
            # the cap (the x0 of nearly pure noise is unknowable; unclipped weights reach 1e4).
            snr = cumprod / (1.0 - cumprod)
            self.tables["loss_weight"] = (1.0 / snr).clamp(min=1.0, max=max_loss_weight)
        else:
            self.tables["loss_weight"] = torch.ones(num_train_timesteps, dtype=torch.float64)

    def _take(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = self.tables[name].to(t.device)[t].to(like.dtype)
        return values.view(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(self, batch: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform timesteps in [0, num_timesteps); with `timestep_band_fraction` > 0, each one is
        instead drawn uniformly from `timestep_band` with that probability."""
        t = torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)
        if self.timestep_band_fraction > 0:  # no extra draws otherwise: uniform runs keep their RNG stream
            lo, hi = self.timestep_band
            band = torch.randint(lo, hi, (batch,), device=device, generator=generator)
            pick = torch.rand(batch, device=device, generator=generator) < self.timestep_band_fraction
            t = torch.where(pick, band, t)
        return t

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._take("sqrt_alphas_cumprod", t, x_start) * x_start + self._take("sqrt_one_minus_alphas_cumprod", t, x_start) * noise

    def vb_terms_bpd(self, eps: torch.Tensor, var_values: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample variational-bound term in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
        for t > 0, the discretised decoder NLL at t = 0."""
        x_start, x_t, eps, var_values = (v.double() for v in (x_start, x_t, eps, var_values))
        coef1, coef2 = self._take("posterior_mean_coef1", t, x_t), self._take("posterior_mean_coef2", t, x_t)
        true_mean = coef1 * x_start + coef2 * x_t
        true_log_variance = self._take("posterior_log_variance_clipped", t, x_t)
        # learned range: interpolate (in log space) between the posterior and the beta variance
        frac = (var_values + 1.0) / 2.0
        model_log_variance = frac * self._take("log_betas", t, x_t) + (1.0 - frac) * true_log_variance
        pred_xstart = self._take("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._take("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        model_mean = coef1 * pred_xstart + coef2 * x_t
        kl = _masked_mean(normal_kl(true_mean, true_log_variance.expand_as(x_t), model_mean, model_log_variance), mask) / math.log(2.0)
        decoder_nll = -_masked_mean(discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_variance), mask) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl).float()

    def training_losses(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`model_fn(x_t, t)` -> (B, C or 2C, ...) for `x_start` (B, C, ...). Returns per-sample
        `loss` (weight(t) x mse + vb), `mse` (unweighted), `vb` (zeros without learned sigma) and
        `timesteps`; `mask` (broadcastable to x_start, 1 = keep) restricts both terms to real
        content."""
        if t is None:
            t = self.sample_timesteps(x_start.shape[0], x_start.device)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = model_fn(x_t, t)
        channels = x_start.shape[1]
        if self.learn_sigma:
            if output.shape[1] != 2 * channels:
                raise ValueError(f"learn_sigma needs {2 * channels} output channels, the model gives {output.shape[1]}")
            eps, var_values = output[:, :channels], output[:, channels:]
            # the bound trains the variance only: its mean path sees a detached epsilon
            vb = self.vb_terms_bpd(eps.detach(), var_values, x_start, x_t, t, mask)
        else:
            eps = output[:, :channels]
            vb = torch.zeros(x_start.shape[0], device=x_start.device)
        mse = _masked_mean((noise.float() - eps.float()) ** 2, mask)
        weight = self.tables["loss_weight"].to(t.device)[t].float()
        return {"loss": weight * mse + vb, "mse": mse, "vb": vb, "timesteps": t}
