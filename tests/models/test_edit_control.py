"""EditControl: motion maps, adaptive fusion, zero-initialised control, save/load, and the
control engine through `osp edit`."""

from __future__ import annotations

import shutil

import pytest
import torch

from osp_core.models.edit_control import AdaptiveFusion, EditControl, blur_size, motion_maps
from osp_core.models.latte_t2v import LatteT2V

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_transformer(num_layers: int = 2) -> LatteT2V:
    torch.manual_seed(0)
    return LatteT2V(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=num_layers, cross_attention_dim=16,
        caption_channels=12, sample_size=[4, 4], patch_size=2, video_length=3, norm_num_groups=4,
    ).eval()  # fmt: skip


def test_blur_scales_from_revideo():
    assert blur_size(512, 512) == (51, 10.0)
    size, sigma = blur_size(64, 64)
    assert size == 7 and sigma == pytest.approx(1.25)


def test_motion_maps_put_displacements_at_the_points():
    # one point moving 2 px right per frame from (10, 20), 9 frames at 32x32
    track = torch.tensor([[[10.0 + 2 * f, 20.0] for f in range(9)]])
    maps = motion_maps(track, 32, 32, temporal=4, spatial=8)
    assert maps.shape == (2 * 64, 3, 4, 4)
    assert maps[:, 0].abs().sum() == 0  # the first latent frame has no motion
    unfolded = torch.nn.functional.pixel_shuffle(maps.permute(1, 0, 2, 3), 8)  # (t, 2, H, W)
    dx, dy = unfolded[1, 0], unfolded[1, 1]
    assert dy.abs().max() == 0
    # latent frame 1 = pixel frames 1..4: four steps of +2 px at x 12, 14, 16, 18 (blur peaks 1)
    assert float(dx[20, 12]) == pytest.approx(2.0, abs=0.3) and float(dx[20, 18]) == pytest.approx(2.0, abs=0.3)
    assert float(dx[20, 15]) > float(dx[20, 26]) >= 0 and float(dx[5, 15]) < 0.01
    # no tracks: all zeros
    assert motion_maps(torch.zeros(0, 9, 2), 32, 32).abs().sum() == 0


def test_fusion_weights_motion_against_content():
    fusion = AdaptiveFusion(content_channels=4, motion_channels=6, channels=5, timestep_dim=16)
    content, motion = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 6, 3, 4, 4)
    region, temb = torch.rand(2, 1, 3, 4, 4), torch.randn(2, 16)
    w = fusion.gate(region, temb)
    assert w.shape == (2, 5, 3, 4, 4) and bool(((w > 0) & (w < 1)).all())
    fused = fusion(content, motion, region, temb)
    assert torch.allclose(fused, fusion.motion_in(motion) * w + fusion.content_in(content) * (1 - w))
    # all motion when the gate saturates high, all content when low
    with torch.no_grad():
        fusion.weight.bias.fill_(50.0)
    assert torch.allclose(fusion(content, motion, region, temb), fusion.motion_in(motion), atol=1e-5)
    with torch.no_grad():
        fusion.weight.bias.fill_(-50.0)
    assert torch.allclose(fusion(content, motion, region, temb), fusion.content_in(content), atol=1e-5)
    # the gate depends on the region and on the timestep
    with torch.no_grad():
        fusion.weight.bias.zero_()
    assert not torch.allclose(fusion.gate(region, temb), fusion.gate(1 - region, temb))
    assert not torch.allclose(fusion.gate(region, temb), fusion.gate(region, temb + 3))


def _conditions(batch=1):
    torch.manual_seed(1)
    return torch.randn(batch, 4, 3, 8, 8), torch.randn(batch, 128, 3, 8, 8), (torch.rand(batch, 1, 3, 8, 8) > 0.5).float()


@torch.no_grad()
def test_untrained_control_changes_nothing_and_trained_does():
    transformer = tiny_transformer()
    control = EditControl.from_transformer(transformer, num_layers=1, fusion_channels=8)
    x, t, captions = torch.randn(2, 4, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 12)
    content, motion, region = _conditions()
    plain = transformer(x, t, captions, return_dict=False)[0]
    assert torch.equal(control(transformer, x, t, captions, content, motion, region), plain)
    # the copied blocks start equal to the transformer's
    assert torch.equal(control.transformer_blocks[0].attn1.to_q.weight, transformer.transformer_blocks[0].attn1.to_q.weight)
    torch.nn.init.normal_(control.zero_projections[0].weight, std=0.1)
    changed = control(transformer, x, t, captions, content, motion, region)
    assert not torch.allclose(changed, plain)
    # and the change depends on the conditions
    assert not torch.allclose(changed, control(transformer, x, t, captions, content, motion.flip(0) * 0 + 1, region))


def test_gradients_reach_the_zero_projection_and_save_load_round_trip(tmp_path):
    transformer = tiny_transformer()
    control = EditControl.from_transformer(transformer, num_layers=2, fusion_channels=8)
    x, t, captions = torch.randn(1, 4, 3, 8, 8), torch.tensor([10]), torch.randn(1, 5, 12)
    out = control(transformer, x, t, captions, *_conditions())
    out.square().mean().backward()
    assert control.zero_projections[0].weight.grad.abs().sum() > 0
    control.save_pretrained(tmp_path / "edit")
    loaded = EditControl.from_pretrained(tmp_path / "edit")
    assert loaded.config.num_layers == 2
    expected, got = control.state_dict(), loaded.state_dict()
    assert list(got) == list(expected)  # every tensor, none extra, in order
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    with pytest.raises(ValueError, match="num_layers"):
        EditControl.from_transformer(transformer, num_layers=3)


@pytest.fixture(scope="module")
def repo_with_control(reference_dir, tmp_path_factory):
    """The tiny reference model with an untrained control module in edit/."""
    from osp_core.pipelines.t2v import T2VPipeline

    folder = tmp_path_factory.mktemp("ctl") / "tiny"
    shutil.copytree(reference_dir / "pipeline" / "tiny-osp-v1.1.0", folder)
    pipe = T2VPipeline.from_pretrained(folder, load_text_encoder=False)
    EditControl.from_transformer(pipe.transformer, num_layers=1, fusion_channels=8).save_pretrained(folder / "edit")
    return folder


def test_untrained_control_engine_equals_blend(repo_with_control, tmp_path):
    from osp_core.io import write_video
    from osp_core.jobs.edit import EditJob, run_edit
    from tests.clips import moving_square

    write_video(tmp_path / "in.mp4", moving_square(), fps=8)
    common = dict(video=tmp_path / "in.mp4", box="0,0,16,32", prompt="a square", tracks=["10,14:20,14"], model=str(repo_with_control), steps=4, seed=5, dtype="fp32")
    auto = run_edit(EditJob(output=tmp_path / "auto.mp4", **common))
    blend = run_edit(EditJob(output=tmp_path / "blend.mp4", engine="blend", **common))
    assert auto.record["engine"] == "control" and auto.record["models"]["edit"].endswith("edit")
    assert torch.equal(auto.frames, blend.frames)


def test_the_control_module_of_a_hub_repository_comes_from_its_cache(repo_with_control, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from osp_core.io import write_video
    from osp_core.jobs.edit import EditJob, run_edit
    from tests.clips import moving_square
    from tests.jobs.test_sampling import hub_cache

    snapshot = hub_cache(tmp_path / "hf", "example/tiny-edit", repo_with_control)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_video(tmp_path / "in.mp4", moving_square(), fps=8)
    job = EditJob(video=tmp_path / "in.mp4", output=tmp_path / "out.mp4", box="0,0,16,32", model="example/tiny-edit", steps=4, seed=5, dtype="fp32")
    record = run_edit(job).record
    assert record["engine"] == "control" and record["models"]["edit"] == str(snapshot / "edit")
