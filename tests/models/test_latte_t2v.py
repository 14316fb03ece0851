"""LatteT2V: released layout, parity with the v1.1.0 implementation, masks, joint forward, I/O."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from osp_core.errors import ModelLoadError
from osp_core.models.latte_t2v import LatteT2V, temporal_interpolation_scale, temporal_position_table

TINY = dict(
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    caption_channels=12,
    cross_attention_dim=16,
    sample_size=[4, 4],
    video_length=5,
    attention_mode="math",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **overrides) -> LatteT2V:
    torch.manual_seed(seed)
    return LatteT2V(**{**TINY, **overrides}).eval()


def tiny_inputs(batch: int = 2, frames: int = 5, tokens: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, frames, 4, 4, generator=g),
        "timestep": torch.tensor([10, 700][:batch]),
        "encoder_hidden_states": torch.randn(batch, tokens, TINY["caption_channels"], generator=g),
    }


# -- released layout ------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["65x512x512", "221x512x512"])
def test_released_names_and_shapes(reference_dir, version):
    from accelerate import init_empty_weights

    config = json.loads((reference_dir / f"t2v_v1.1.0_{version}_config.json").read_text())
    expected = json.loads((reference_dir / f"t2v_v1.1.0_{version}_state_dict.json").read_text())
    with init_empty_weights():  # 1.06B parameters on the meta device: no memory
        model = LatteT2V.from_config(config)
    got = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert got == expected
    assert "caption_projection.y_embedding" in got
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.057e9, rel=1e-3)
    # the long weights (56 latent frames) use interpolation scale 3, the short ones (17) scale 1
    assert model.temporal_scale == (3 if version.startswith("221") else 1)
    assert model.temp_pos_embed.shape == (config["video_length"], 1152)


@pytest.mark.parametrize(
    "length, scale", [(1, 1), (5, 1), (16, 1), (17, 1), (32, 2), (33, 2), (36, 2), (56, 3), (65, 4)]
)
def test_temporal_interpolation_scale(length, scale):
    assert temporal_interpolation_scale(length) == scale


def test_temporal_table_positions_are_divided_by_scale():
    table = temporal_position_table(8, 7, scale=3)
    position = 2 / 3  # frame 2 at scale 3
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    expected = torch.cat([torch.sin(position * omega), torch.cos(position * omega)]).float()
    assert torch.allclose(table[2], expected, atol=1e-6)


def test_unsupported_config_is_rejected():
    with pytest.raises(ModelLoadError, match="use_rope"):
        LatteT2V(**TINY, use_rope=True)
    with pytest.raises(ModelLoadError, match="compress_kv_factor"):
        LatteT2V(**TINY, compress_kv_factor=2)


# -- parity with the original -------------------------------------------------------------


@pytest.mark.parametrize("name", ["t2v_small", "t2v_small_long", "t2v_small_joint"])
def test_parity_with_reference(reference_dir, name):
    meta = json.loads((reference_dir / f"{name}.json").read_text())
    tensors = load_file(str(reference_dir / f"{name}.safetensors"))
    config = {k: v for k, v in meta["config"].items() if not k.startswith("_")}
    model = LatteT2V(**config)
    weights = {k.removeprefix("model."): v.float() for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(weights, strict=True)
    model.train(meta["training_mode"])
    if meta["training_mode"]:
        model.enable_gradient_checkpointing()
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    with torch.no_grad():
        out = model(**inputs, use_image_num=meta["use_image_num"], return_dict=False)[0]
    expected = tensors["output.sample"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= 1e-4


# -- behaviour ----------------------------------------------------------------------------


def test_output_shape_and_dtype():
    model = tiny_model()
    out = model(**tiny_inputs()).sample
    assert out.shape == (2, 8, 5, 4, 4)
    assert torch.isfinite(out).all()


def test_masked_caption_tokens_do_not_matter():
    model = tiny_model()
    inputs = tiny_inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        out = model(**inputs, encoder_attention_mask=mask).sample
        changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        changed["encoder_hidden_states"][0, 3:] = 100.0
        changed["encoder_hidden_states"][1, 5:] = -50.0
        out_changed = model(**changed, encoder_attention_mask=mask).sample
        unmasked = model(**changed).sample
    assert torch.allclose(out, out_changed, atol=1e-5)
    # without the mask the same change does reach the output
    assert (unmasked - out).abs().max() > 1e-3


def test_a_caption_shared_by_the_frames_equals_a_copy_per_frame():
    """Without images a video's frames share one caption (its keys and values computed once);
    handing every frame its own copy of the caption and mask gives the same tokens."""
    model = tiny_model()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        shared = model.embed(**tiny_inputs(), encoder_attention_mask=mask)
        assert shared.captions.shape == (2, 6, 16) and shared.caption_bias.shape == (2, 1, 6)
        per_frame = dataclasses.replace(
            shared, captions=shared.captions.repeat_interleave(5, 0), caption_bias=shared.caption_bias.repeat_interleave(5, 0)
        )
        assert torch.allclose(model.run_blocks(shared), model.run_blocks(per_frame), atol=1e-6)
        # the frames of video 0 must see caption 0: swapping the per-frame copies changes the tokens
        swapped = dataclasses.replace(per_frame, captions=per_frame.captions.flip(0), caption_bias=per_frame.caption_bias.flip(0))
        assert (model.run_blocks(swapped) - model.run_blocks(shared)).abs().max() > 1e-3


def test_cut_caption_equals_masked_caption():
    """What the sampler does (cut to the token count) equals masking the padding."""
    model = tiny_model()
    inputs = tiny_inputs(batch=1)
    with torch.no_grad():
        masked = model(**inputs, encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).sample
        cut = model(**dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :4])).sample
    assert torch.allclose(masked, cut, atol=1e-5)


def test_joint_images_are_independent_of_the_video():
    """Images appended after the video frames skip temporal attention and use their own caption."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 5 + 2, 4, 4, generator=g)
    captions = torch.randn(1, 3, 6, TINY["caption_channels"], generator=g)
    masks = torch.ones(1, 3, 6)
    with torch.no_grad():
        joint = model(latents, torch.tensor([50]), captions, masks, use_image_num=2).sample
        other_video = latents.clone()
        other_video[:, :, :5] = torch.randn(1, 4, 5, 4, 4, generator=g)
        joint_other = model(other_video, torch.tensor([50]), captions, masks, use_image_num=2).sample
        # image 1 alone, as a one-frame "video" without temporal attention, with its caption
        alone = model(latents[:, :, 5:6], torch.tensor([50]), captions[:, 1], enable_temporal_attentions=False).sample
        video_only = model(latents[:, :, :5], torch.tensor([50]), captions[:, 0]).sample
    assert joint.shape == (1, 8, 7, 4, 4)
    assert torch.allclose(joint[:, :, 5:], joint_other[:, :, 5:], atol=1e-5)
    assert (joint[:, :, :5] - joint_other[:, :, :5]).abs().max() > 1e-3
    assert torch.allclose(joint[:, :, 5:6], alone, atol=1e-5)
    assert torch.allclose(joint[:, :, :5], video_only, atol=1e-5)


def test_wrong_caption_count_for_joint_input():
    model = tiny_model()
    inputs = tiny_inputs(frames=7)
    with pytest.raises(ValueError, match="captions per sample"):
        model(**inputs, use_image_num=2)


def test_fewer_frames_use_the_start_of_the_table_and_more_frames_extend_it():
    model = tiny_model()
    assert torch.equal(model._temporal_positions(3, torch.zeros(1))[0], model.temp_pos_embed[:3])
    longer = model._temporal_positions(9, torch.zeros(1))[0]
    assert longer.shape == (9, 16)
    assert torch.allclose(longer[:5], model.temp_pos_embed, atol=1e-7)
    out = model(**tiny_inputs(batch=1, frames=9)).sample
    assert out.shape == (1, 8, 9, 4, 4)


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = tiny_inputs()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        assert model.gradient_checkpointing is checkpointing
        model(**inputs).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "LatteT2V" and saved["video_length"] == 5 and saved["attention_mode"] == "math"
    loaded = LatteT2V.from_pretrained(tmp_path).eval()
    expected, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)  # every tensor, none extra, in order
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, loaded(**inputs).sample)


def test_loading_is_strict_about_the_persistent_buffer(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    weights.pop("caption_projection.y_embedding")
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match="y_embedding"):
        LatteT2V.from_pretrained(tmp_path)


def test_half_precision_forward():
    model = tiny_model().to(torch.bfloat16)
    out = model(**tiny_inputs()).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    ref = tiny_model()(**tiny_inputs()).sample
    assert (out.float() - ref).abs().max() < 0.1 * max(1.0, math.sqrt(ref.square().mean().item()))
