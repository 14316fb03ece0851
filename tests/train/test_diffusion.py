"""The IDDPM hybrid objective: schedule, exact zero bound for a perfect model, variance-only bound."""

from __future__ import annotations

import math

import pytest
import torch

from osp_core.train.diffusion import GaussianDiffusionObjective, discretized_gaussian_log_likelihood, normal_kl


def test_schedule_matches_diffusers_ddpm():
    objective = GaussianDiffusionObjective()
    cumprod = objective.tables["sqrt_alphas_cumprod"] ** 2
    assert torch.allclose(cumprod.float(), objective.scheduler.alphas_cumprod, atol=1e-6)
    assert objective.scheduler.config.beta_schedule == "linear" and objective.num_timesteps == 1000
    betas = torch.exp(objective.tables["log_betas"])
    assert math.isclose(betas[0].item(), 1e-4, rel_tol=1e-9) and math.isclose(betas[-1].item(), 2e-2, rel_tol=1e-9)


def test_perfect_prediction_has_zero_mse_and_zero_bound():
    torch.manual_seed(0)
    objective = GaussianDiffusionObjective()
    x0 = torch.randn(4, 4, 3, 2, 2).clamp(-1, 1)
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 10, 500, 999])

    def oracle(x_t, t_):
        # exact epsilon, and the variance value -1 that selects the true posterior variance
        return torch.cat([noise, -torch.ones_like(noise)], dim=1)

    terms = objective.training_losses(oracle, x0, t=t, noise=noise)
    assert terms["mse"].abs().max() < 1e-10
    assert terms["vb"].abs().max() < 1e-5
    # a wrong variance costs bits; t = 0 gives the (positive) decoder NLL
    worse = objective.training_losses(lambda x_t, t_: torch.cat([noise, torch.ones_like(noise)], dim=1), x0, t=t, noise=noise)
    # (at large t the posterior variance approaches beta_t, so the learned range shrinks to ~0)
    assert (worse["vb"] >= 0).all() and worse["vb"][:2].min() > 1e-3
    at_zero = objective.training_losses(oracle, x0, t=torch.zeros(4, dtype=torch.long), noise=noise)
    assert (at_zero["vb"] > 0).all() and torch.equal(at_zero["loss"], at_zero["mse"] + at_zero["vb"])


def test_bound_trains_only_the_variance_channels():
    x0 = torch.rand(2, 4, 2, 4, 4) * 2 - 1
    prediction = torch.randn(2, 8, 2, 4, 4, requires_grad=True)
    terms = GaussianDiffusionObjective().training_losses(lambda x_t, t: prediction, x0, t=torch.tensor([3, 700]))
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), prediction, retain_graph=True)
    assert grad_vb[:, :4].abs().max() == 0 and grad_vb[:, 4:].abs().max() > 0
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), prediction)
    assert grad_mse[:, 4:].abs().max() == 0 and grad_mse[:, :4].abs().max() > 0


def test_mask_restricts_the_loss_to_kept_elements():
    objective = GaussianDiffusionObjective(learn_sigma=False)
    x0 = torch.zeros(1, 4, 2, 2, 2)
    noise = torch.ones_like(x0)
    prediction = torch.ones_like(x0)
    prediction[:, :, 1] = 5.0  # wrong only in the second frame
    mask = torch.ones(1, 1, 2, 1, 1)
    assert objective.training_losses(lambda x_t, t: prediction, x0, noise=noise)["mse"] > 0
    mask[:, :, 1] = 0
    assert objective.training_losses(lambda x_t, t: prediction, x0, noise=noise, mask=mask)["mse"] == 0


def test_helpers_against_closed_forms():
    zero = torch.zeros(3)
    assert torch.allclose(normal_kl(zero, zero, zero, zero), zero)
    assert torch.isclose(normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)), torch.tensor(0.5))
    # a very sharp Gaussian centred on the value puts (almost) all mass in its bin
    ll = discretized_gaussian_log_likelihood(torch.tensor([0.0, 0.5]), torch.tensor([0.0, 0.5]), torch.tensor([-8.0, -8.0]))
    assert ll.abs().max() < 1e-4


def test_uniform_timesteps_keep_their_random_stream():
    # a run without the high-noise band draws exactly what torch.randint draws (reproducible builds)
    torch.manual_seed(7)
    drawn = GaussianDiffusionObjective().sample_timesteps(64, "cpu")
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.randint(0, 1000, (64,)))


def test_timestep_band_takes_its_share_of_timesteps():
    generator = torch.Generator().manual_seed(0)
    everything = GaussianDiffusionObjective(timestep_band_fraction=1.0, timestep_band=(500, 900)).sample_timesteps(4000, "cpu", generator)
    assert everything.min() >= 500 and everything.max() < 900
    mixed = GaussianDiffusionObjective(timestep_band_fraction=0.75, timestep_band=(500, 900)).sample_timesteps(20000, "cpu", generator)
    # 0.75 from the band + 0.25 x 0.4 of the uniform draws land in [500, 900)
    in_band = ((mixed >= 500) & (mixed < 900)).float().mean().item()
    assert abs(in_band - 0.85) < 0.02, in_band
    assert mixed.min() < 50 and mixed.max() > 950  # the uniform share still covers every step


def test_bad_timestep_band_settings_are_refused():
    with pytest.raises(ValueError, match="timestep_band_fraction"):
        GaussianDiffusionObjective(timestep_band_fraction=1.5)
    with pytest.raises(ValueError, match="timestep_band"):
        GaussianDiffusionObjective(timestep_band_fraction=0.5, timestep_band=(900, 500))
    with pytest.raises(ValueError, match="timestep_band"):
        GaussianDiffusionObjective(timestep_band=(0, 1001))


def test_inverse_snr_weighting_is_a_clipped_x0_mse():
    uniform = GaussianDiffusionObjective(learn_sigma=False)
    weighted = GaussianDiffusionObjective(learn_sigma=False, loss_weighting="inverse_snr", max_loss_weight=20.0)
    x0 = torch.zeros(3, 4, 2, 2, 2)
    noise = torch.zeros_like(x0)
    prediction = torch.full_like(x0, 0.5)  # the same epsilon error at every timestep
    t = torch.tensor([10, 400, 900])
    plain = uniform.training_losses(lambda x_t, t_: prediction, x0, t=t, noise=noise)
    terms = weighted.training_losses(lambda x_t, t_: prediction, x0, t=t, noise=noise)
    assert torch.equal(terms["mse"], plain["mse"]) and torch.equal(plain["loss"], plain["mse"])
    cumprod = uniform.tables["sqrt_alphas_cumprod"] ** 2
    inverse_snr = float((1 - cumprod[400]) / cumprod[400])
    assert 1.0 < inverse_snr < 20.0
    # low noise keeps weight 1, mid noise gets 1/SNR (the x0 error), high noise the cap
    assert torch.allclose(terms["loss"], torch.tensor([1.0, inverse_snr, 20.0]) * plain["mse"], rtol=1e-5)
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusionObjective(loss_weighting="snr")
    with pytest.raises(ValueError, match="max_loss_weight"):
        GaussianDiffusionObjective(loss_weighting="inverse_snr", max_loss_weight=0.5)
