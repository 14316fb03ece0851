"""Tail-init inflation of a diffusers image VAE into the CausalVideoVAE."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from osp_core.train.inflate import inflate_from_module, inflate_state_dict


def _image_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
    )
    with torch.no_grad():  # make norms and biases non-trivial, so a mis-mapped tensor shows
        for name, param in vae.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return vae.eval()


@torch.no_grad()
def test_static_video_reconstructs_every_frame_like_the_image_vae():
    image_vae = _image_vae()
    video_vae = inflate_from_module(image_vae).eval()
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    expected_latent = image_vae.encode(image).latent_dist.mode()
    expected = image_vae.decode(expected_latent).sample
    static = image[:, :, None].repeat(1, 1, 9, 1, 1)  # 9 identical frames -> 3 latent frames
    posterior = video_vae.encode(static).latent_dist
    assert posterior.mode().shape == (1, 4, 3, 4, 4)
    assert torch.allclose(posterior.mode(), expected_latent[:, :, None].expand_as(posterior.mode()), atol=1e-4)
    frames = video_vae.decode(posterior.mode()).sample
    assert frames.shape == static.shape
    for t in range(9):
        assert torch.allclose(frames[:, :, t], expected, atol=1e-4), f"frame {t} differs"


def test_tail_init_layout():
    image_vae = _image_vae()
    video_vae = inflate_from_module(image_vae)
    state = inflate_state_dict(image_vae.state_dict(), video_vae)
    kernel = state["encoder.down.2.block.0.conv1.conv.weight"]  # a 3D resnet block
    assert kernel.shape[2] == 3
    assert kernel[:, :, :2].abs().max() == 0
    assert torch.equal(kernel[:, :, 2], image_vae.state_dict()["encoder.down_blocks.2.resnets.0.conv1.weight"])
    time_conv = state["encoder.down.1.time_downsample.conv.weight"]  # no 2D counterpart: identity tap
    assert time_conv.sum() == time_conv.shape[0] and time_conv[0, 0, -1, 1, 1] == 1
    assert video_vae.config.scaling_factor == image_vae.config.scaling_factor


def test_recipe_inflates_a_folder_and_resets_mix_factors(tmp_path):
    import pytest

    from osp_core.errors import InputError
    from osp_core.train.config import VAETrainConfig, load_config
    from osp_core.train.vae_recipe import load_vae_for_training

    _image_vae().save_pretrained(tmp_path / "sd" / "vae")
    cfg = load_config(VAETrainConfig, None, {"model.init_from_2d_vae": str(tmp_path / "sd"), "model.reset_mix_factor": 0.5})
    vae, loss_state = load_vae_for_training(cfg)
    mix = [p for n, p in vae.named_parameters() if n.endswith("mix_factor")]
    assert len(mix) == 4 and all(float(p.detach()) == 0.5 for p in mix) and loss_state == {}
    both = load_config(VAETrainConfig, None, {"model.init_from_2d_vae": "x", "model.config": "y.json"})
    with pytest.raises(InputError, match="both given"):
        load_vae_for_training(both)
