"""VAE objective: LPIPS weights, 3D PatchGAN, hinge, KL, adaptive weight, the combined loss."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from safetensors.torch import save_file

from osp_core.errors import InputError
from osp_core.train.losses import (
    LPIPS,
    PatchGAN3D,
    VAELoss,
    adaptive_weight,
    build_lpips,
    convert_lpips_weights,
    hinge_d_loss,
    kl_loss,
    load_lpips_state,
)


def _random_lpips_file(path, torchvision_names=False):
    torch.manual_seed(0)
    state = LPIPS().state_dict()
    out = {}
    for key, value in state.items():
        value = torch.rand_like(value) * 0.1 if "lin" in key else torch.randn_like(value) * 0.05
        if key.startswith("scaling_layer"):
            continue  # constants: optional in a weights file
        if torchvision_names and key.startswith("net.slice"):
            key = "features." + key.split(".", 3)[2] + "." + key.split(".", 3)[3]
        out[key] = value
    save_file(out, str(path))
    return out


def test_lpips_loads_lpips_and_torchvision_names(tmp_path):
    lpips_names = _random_lpips_file(tmp_path / "a.safetensors")
    _random_lpips_file(tmp_path / "b.safetensors", torchvision_names=True)
    a = build_lpips(load_lpips_state(str(tmp_path / "a.safetensors")))
    b = build_lpips(load_lpips_state(str(tmp_path / "b.safetensors")))
    assert torch.equal(getattr(a.net.slice3, "10").weight, lpips_names["net.slice3.10.weight"])
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(a(x, y), b(x, y))
    assert a(x, x).abs().max() == 0 and (a(x, y) > 0).all()
    a.train()
    assert not a.training  # a frozen metric never switches to train mode (dropout)


def test_lpips_weights_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_lpips_state(str(tmp_path / "none.safetensors"))
    save_file({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, str(tmp_path / "part.safetensors"))
    with pytest.raises(InputError, match="lack"):
        build_lpips(load_lpips_state(str(tmp_path / "part.safetensors")))
    with pytest.raises(InputError, match="perceptual"):
        VAELoss(None, perceptual_weight=1.0)


def test_convert_lpips_weights(tmp_path):
    state = LPIPS().state_dict()
    features = {"features." + k.split(".", 3)[2] + "." + k.split(".", 3)[3]: v for k, v in state.items() if k.startswith("net.")}
    heads = {k: v for k, v in state.items() if k.startswith("lin")}
    out = convert_lpips_weights(features, heads, tmp_path / "lpips.safetensors")
    rebuilt = build_lpips(load_lpips_state(str(out)))
    assert torch.equal(rebuilt.lin4.model[1].weight, state["lin4.model.1.weight"])


def test_patchgan_layout_and_short_clips():
    disc = PatchGAN3D(3, 8, 3)
    convs = [m for m in disc.main if isinstance(m, torch.nn.Conv3d)]
    norms = [m for m in disc.main if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(convs) == 5 and len(norms) == 3  # 3 layers + the stride-1 layer + the logit conv
    assert disc.min_extent(spatial=False) == 10
    disc.eval()  # BatchNorm from its running statistics: the same input gives the same logits
    short = torch.randn(2, 3, 5, 32, 32)
    logits = disc(short)  # 5 frames: extended to the receptive field by repeating the last frame
    assert logits.shape[:2] == (2, 1) and logits.numel() >= 2
    repeated = torch.cat([short, short[:, :, -1:].expand(-1, -1, 5, -1, -1)], dim=2)
    assert torch.equal(logits, disc(repeated))
    zero_padded = torch.cat([short, torch.zeros_like(short)], dim=2)
    assert not torch.equal(logits, disc(zero_padded))


def test_hinge_kl_and_adaptive_weight():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1.0
    moments = torch.zeros(2, 8, 1, 2, 2)  # mean 0, logvar 0: the prior itself
    assert kl_loss(DiagonalGaussianDistribution(moments)) == 0
    moments[:, :4] = 1.0
    assert torch.isclose(kl_loss(DiagonalGaussianDistribution(moments)), torch.tensor(0.5 * 4 * 4.0))
    w = torch.nn.Parameter(torch.ones(3))
    nll, g = (2 * w).sum(), (4 * w).sum()
    assert torch.isclose(adaptive_weight(nll, g, w, scale=0.5), torch.tensor(0.5 * 2 / (4 + 1e-4 / 3**0.5)), rtol=1e-4)


def test_vae_loss_switches_gan_on_at_disc_start():
    torch.manual_seed(0)
    loss = VAELoss(None, disc_start=3, perceptual_weight=0.0, disc_channels=8)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    layer = torch.nn.Parameter(torch.ones(1))
    recon = (x * 0.5) * layer
    moments = torch.zeros(1, 8, 2, 4, 4)
    before = loss("generator", x, recon, moments, step=2, last_layer=layer)
    after = loss("generator", x, recon, moments, step=3, last_layer=layer)
    assert before["g"] == 0 and before["d_weight"] == 0
    assert after["d_weight"] > 0 and after["loss"] != before["loss"]
    # L1 summed over pixels / (B*T), logvar 0
    assert torch.isclose(before["nll"], (x - recon).abs().sum() / 5)
    assert loss("discriminator", x, recon, step=2)["loss"] == 0
    assert loss("discriminator", x, recon, step=3)["loss"] > 0
    assert set(loss.state_dict()) == {"logvar", *("discriminator." + k for k in loss.discriminator.state_dict())}


@pytest.mark.parametrize("kind, error", [("l1", lambda d: d.abs()), ("l2", lambda d: d.square()), ("l1+l2", lambda d: d.abs() + d.square())])
def test_vae_loss_pixel_error(kind, error):
    torch.manual_seed(0)
    loss = VAELoss(None, perceptual_weight=0.0, disc_channels=8, pixel_loss=kind)
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    recon = x * 0.5
    out = loss("generator", x, recon, torch.zeros(2, 8, 2, 4, 4), step=0)
    assert torch.isclose(out["nll"], error(x - recon).sum() / (2 * 5))  # summed / (B*T), logvar 0
    assert torch.isclose(out["rec"], error(x - recon).mean())


def test_vae_loss_rejects_an_unknown_pixel_loss():
    with pytest.raises(InputError, match="unknown pixel loss 'l3'"):
        VAELoss(None, perceptual_weight=0.0, pixel_loss="l3")
