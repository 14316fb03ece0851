"""CausalVideoVAE: parity with the original v1.1.0 implementation, released-checkpoint
compatibility, tiling, causality and save/load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from osp_core import CausalVideoVAE
from osp_core.errors import InputError, ModelLoadError
from osp_core.models.causal_vae import CausalConv3d, TimeDownsampleRes2x, TimeUpsampleRes2x, read_loss_state_dict

TOL = 1e-4


def _load_fixture(reference_dir, name):
    meta = json.loads((reference_dir / f"{name}.json").read_text())
    tensors = {}
    with safe_open(str(reference_dir / f"{name}.safetensors"), framework="pt") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return meta, tensors


@pytest.fixture(scope="module")
def small(reference_dir):
    meta, tensors = _load_fixture(reference_dir, "vae_small")
    config = {k: v for k, v in meta["config"].items() if not k.startswith("_")}
    model = CausalVideoVAE(**config).eval()
    state = {k[len("model."):]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    return model, meta, tensors


def test_encode_moments_match_reference(small):
    model, _, t = small
    with torch.no_grad():
        posterior = model.encode(t["input.video"]).latent_dist
    moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
    assert moments.shape == t["output.moments"].shape
    assert (moments - t["output.moments"]).abs().max() <= TOL


def test_decode_matches_reference(small):
    model, _, t = small
    mean = t["output.moments"][:, :4]
    with torch.no_grad():
        video = model.decode(mean).sample
    assert video.shape == t["output.decoded"].shape
    assert (video - t["output.decoded"]).abs().max() <= TOL


def _tiled(model, tiling):
    model.enable_tiling(
        tile_sample_size=tiling["tile_sample_min_size"],
        tile_sample_frames=tiling["tile_sample_min_size_t"],
        tile_overlap_factor=tiling["tile_overlap_factor"],
    )
    assert model.tile_latent_min_size == tiling["tile_latent_min_size"]
    assert model.tile_latent_min_size_t == tiling["tile_latent_min_size_t"]


def test_tiled_encode_and_decode_match_reference(small):
    model, meta, t = small
    _tiled(model, meta["tiling"])
    try:
        calls = []
        with torch.no_grad():
            posterior = model.encode(t["input.video_tiled"], progress=lambda: calls.append(1)).latent_dist
            moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
            assert moments.shape == t["output.tiled_moments"].shape
            assert (moments - t["output.tiled_moments"]).abs().max() <= TOL
            assert len(calls) == model.num_tiles(t["input.video_tiled"].shape, latent=False) > 1
            video = model.decode(t["output.tiled_moments"][:, :4]).sample
        assert video.shape == t["output.tiled_decoded"].shape
        assert (video - t["output.tiled_decoded"]).abs().max() <= TOL
    finally:
        model.disable_tiling()


def test_tiling_is_skipped_when_input_fits_a_tile(small):
    model, _, t = small
    model.enable_tiling(tile_sample_size=256, tile_sample_frames=65)
    try:
        with torch.no_grad():
            posterior = model.encode(t["input.video"]).latent_dist
        assert (posterior.mean - t["output.moments"][:, :4]).abs().max() <= TOL
    finally:
        model.disable_tiling()


def test_released_state_dict_names_and_shapes(reference_dir):
    config = json.loads((reference_dir / "vae_v1.1.0_config.json").read_text())
    expected = json.loads((reference_dir / "vae_v1.1.0_state_dict.json").read_text())
    with torch.device("meta"):
        model = CausalVideoVAE.from_config(config)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert model.spatial_compression == 8 and model.temporal_compression == 4
    assert model.config.scaling_factor == pytest.approx(0.18215)


def test_from_pretrained_released_layout_with_loss_weights(tmp_path, reference_dir):
    """A released-style folder (config with _class_name CausalVAEModel, weights that also carry
    `loss.*`) loads strictly; the loss weights stay readable for training."""
    meta, tensors = _load_fixture(reference_dir, "vae_small")
    vae_dir = tmp_path / "repo" / "vae"
    vae_dir.mkdir(parents=True)
    (vae_dir / "config.json").write_text(json.dumps(meta["config"]))
    state = {k[len("model."):]: v.float().contiguous() for k, v in tensors.items() if k.startswith("model.")}
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4, 4)
    save_file(state, str(vae_dir / "diffusion_pytorch_model.safetensors"))
    model = CausalVideoVAE.from_pretrained(str(tmp_path / "repo"), subfolder="vae").eval()
    with torch.no_grad():
        posterior = model.encode(tensors["input.video"]).latent_dist
    assert (posterior.mean - tensors["output.moments"][:, :4]).abs().max() <= TOL
    assert list(read_loss_state_dict(vae_dir)) == ["discriminator.main.0.weight"]


def test_missing_weights_are_an_error(tmp_path, reference_dir):
    meta, tensors = _load_fixture(reference_dir, "vae_small")
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text(json.dumps(meta["config"]))
    state = {k[len("model."):]: v.float().contiguous() for k, v in tensors.items() if k.startswith("model.") and "decoder.conv_out" not in k}
    save_file(state, str(vae_dir / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match="decoder.conv_out"):
        CausalVideoVAE.from_pretrained(str(vae_dir))
    with pytest.raises(ModelLoadError, match="no config.json"):
        CausalVideoVAE.from_pretrained(str(tmp_path))


def _tiny() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(hidden_size=32, hidden_size_mult=(1, 2, 2, 2), num_res_blocks=1).eval()


def test_save_load_round_trip(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    again = CausalVideoVAE.from_pretrained(str(tmp_path / "vae")).eval()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        a = model.encode(x).latent_dist.mean
        b = again.encode(x).latent_dist.mean
    assert torch.equal(a, b)


def test_shapes_and_image_coding():
    """T = 4k+1 frames -> k+1 latent frames; a single frame is coded as an image."""
    model = _tiny()
    with torch.no_grad():
        z = model.encode(torch.rand(1, 3, 9, 16, 16) * 2 - 1).latent_dist.mean
        assert z.shape == (1, 4, 3, 2, 2)
        assert model.decode(z).sample.shape == (1, 3, 9, 16, 16)
        image = model.encode(torch.rand(1, 3, 1, 16, 16) * 2 - 1).latent_dist.mean
        assert image.shape == (1, 4, 1, 2, 2)
        assert model.decode(image).sample.shape == (1, 3, 1, 16, 16)


@pytest.mark.parametrize("block", [
    CausalConv3d(4, 4, 3, padding=1),
    TimeDownsampleRes2x(4, 4),
    TimeUpsampleRes2x(4, 4),
], ids=["conv", "time_down", "time_up"])
def test_temporal_layers_are_causal(block):
    """Outputs for the first frames do not change when later frames change. (The whole VAE is
    not strictly causal: its 3D GroupNorms pool statistics over the clip, as in the original.)"""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 6, 6)
    y = x.clone()
    y[:, :, 5:] = torch.randn_like(y[:, :, 5:])
    with torch.no_grad():
        ox, oy = block(x), block(y)
    keep = {CausalConv3d: 5, TimeDownsampleRes2x: 3, TimeUpsampleRes2x: 8}[type(block)]  # interpolation reads one frame ahead
    assert torch.allclose(ox[:, :, :keep], oy[:, :, :keep], atol=1e-6)
    assert not torch.allclose(ox, oy)


def test_bad_video_shapes_name_the_fix():
    model = _tiny()
    with pytest.raises(InputError, match="use 9 or 13 frames"):
        model.check_video(torch.zeros(1, 3, 10, 16, 16))
    with pytest.raises(InputError, match="multiple of 8"):
        model.check_video(torch.zeros(1, 3, 9, 20, 16))
    model.check_video(torch.zeros(1, 3, 9, 16, 16))


def test_gradient_checkpointing_gives_same_gradients():
    model = _tiny().train()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    model(x, sample_posterior=False).sample.square().mean().backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
    model(x, sample_posterior=False).sample.square().mean().backward()
    for expected, p in zip(reference, model.parameters(), strict=True):
        assert torch.allclose(expected, p.grad, atol=1e-6)


def test_bf16_on_cpu_runs_close_to_fp32():
    """Every layer has a bf16 CPU kernel (the temporal average pool is written as slices)."""
    model = _tiny()
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean
        low = model.to(torch.bfloat16).encode(x.bfloat16()).latent_dist.mean.float()
        video = model.decode(low.bfloat16()).sample
    assert video.dtype == torch.bfloat16 and video.shape == (1, 3, 9, 16, 16)
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()


def test_trains_under_bf16_autocast():
    """Mixed precision: the time resamplers mix a low-precision conv with a full-precision branch."""
    model = _tiny().train()
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, sample_posterior=False).sample
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
