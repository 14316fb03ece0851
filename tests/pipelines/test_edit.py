"""The blend engine on the tiny reference model: known latents stay, outside pixels stay."""

from __future__ import annotations

import pytest
import torch

from osp_core.pipelines.edit import EditInputs, edit_latents, paste_outside, prepare_latents
from osp_core.pipelines.edit_inputs import box_mask
from tests.clips import moving_square

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture(scope="module")
def pipe(tiny_repo):
    from osp_core.pipelines.t2v import T2VPipeline

    pipe = T2VPipeline.from_pretrained(tiny_repo, scheduler="DDIM")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(pipe):
    return pipe.encode_prompt("a square", do_classifier_free_guidance=True)


def test_an_empty_region_gives_the_vae_round_trip(pipe):
    frames = moving_square()
    inputs = EditInputs(frames, 8.0, torch.zeros(9, 32, 32), None, [], "track")
    latents = prepare_latents(pipe.vae, inputs)
    final = edit_latents(pipe, latents, _embeds(pipe), steps=3, guidance=4.0, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(final, latents.source)
    edited = pipe.decode_latents(final)
    assert torch.equal(edited, pipe.decode_latents(latents.source))


def test_known_latents_are_held_at_every_step(pipe):
    from osp_core.pipelines.denoising import DenoisingCallback

    frames = moving_square()
    first = frames[0].clone()
    first[..., 2] = 255  # an edited first frame
    mask = box_mask((0, 0, 16, 32), 9, 32, 32)
    latents = prepare_latents(pipe.vae, EditInputs(frames, 8.0, mask, first, [torch.tensor([[8.0, 12.0]] * 9)], "track"))
    seen = []

    class Spy(DenoisingCallback):
        def on_step_begin(self, step, x):
            seen.append((step, x.clone()))

    final = edit_latents(pipe, latents, _embeds(pipe), steps=3, guidance=1.0, strength=1.0, generator=torch.Generator().manual_seed(0), callbacks=[Spy()])
    keep = latents.keep.bool().expand_as(final)
    assert torch.equal(final[keep], latents.known[keep])
    assert not torch.equal(final, latents.known)  # the region was generated
    # the first latent frame is the edited frame's, not the source's
    assert not torch.allclose(latents.known[:, :, 0], latents.source[:, :, 0])
    step, x = seen[1]
    noised = step.scheduler.add_noise(latents.known, torch.zeros_like(latents.known), step.timestep.reshape(1))
    assert x.shape == final.shape and not torch.equal(x[keep], noised[keep])  # noise was added, not zeros


def test_motion_guide_moves_the_first_frames_region_along_the_track():
    from osp_core.pipelines.edit import motion_guide

    source = torch.full((5, 32, 32, 3), 7, dtype=torch.uint8)
    source[:, 24:, 24:] = 200  # outside the region: must come through as it is
    first = torch.full((32, 32, 3), 10, dtype=torch.uint8)
    first[8:12, 4:8] = 250
    mask = box_mask((2, 2, 20, 20), 5, 32, 32)
    track = torch.tensor([[6.0 + 2 * t, 10.0] for t in range(5)])  # 2 px to the right per frame
    guide = motion_guide(EditInputs(source, 8.0, mask, first, [track], "track"))
    for t in range(5):
        expected = torch.full((18, 18, 3), 10, dtype=torch.uint8)  # what the move uncovers: the region's median
        expected[6:10, 2 + 2 * t : 6 + 2 * t] = 250
        assert torch.equal(guide[t, 2:20, 2:20], expected), t
    outside = ~mask.bool()
    assert torch.equal(guide[outside], source[outside])


def test_strength_below_one_starts_from_the_encoded_motion_guide(pipe):
    from osp_core.io import to_model_input
    from osp_core.pipelines.edit import blend_start_latents, motion_guide
    from osp_core.pipelines.video_vae import encode

    frames = moving_square()
    inputs = EditInputs(frames, 8.0, box_mask((0, 0, 16, 32), 9, 32, 32), None, [torch.tensor([[8.0 + t, 12.0] for t in range(9)])], "track")
    plain = prepare_latents(pipe.vae, inputs)
    with pytest.raises(ValueError, match="guide=True"):
        edit_latents(pipe, plain, _embeds(pipe), steps=4, guidance=1.0, strength=0.5, generator=torch.Generator().manual_seed(0))
    latents = prepare_latents(pipe.vae, inputs, guide=True)
    expected = encode(pipe.vae, to_model_input(motion_guide(inputs))) * pipe.vae.config.scaling_factor
    assert torch.equal(latents.guide, expected)
    init, _ = blend_start_latents(latents, torch.Generator().manual_seed(0))
    region = latents.region[None, None].bool()
    assert torch.equal(init[region.expand_as(init)], expected[region.expand_as(init)])
    assert torch.equal(init[~region.expand_as(init)], latents.source[~region.expand_as(init)])


def test_strength_below_one_runs_only_the_steps_after_the_cut(pipe):
    from osp_core.pipelines.denoising import DenoisingCallback
    from osp_core.pipelines.edit import blend_start_latents, steps_after_cut

    assert [steps_after_cut(*a) for a in [(150, 0.2), (8, 0.25), (4, 0.1), (4, 1.0), (10, 0.1, 4), (3, 0.5, 4)]] == [30, 2, 1, 4, 4, 3]
    inputs = EditInputs(moving_square(), 8.0, box_mask((0, 0, 16, 32), 9, 32, 32), None, [torch.tensor([[8.0 + t, 12.0] for t in range(9)])], "track")
    latents = prepare_latents(pipe.vae, inputs, guide=True)
    seen = []

    class Spy(DenoisingCallback):
        def on_step_begin(self, step, x):
            seen.append((step, x.clone()))

    edit_latents(pipe, latents, _embeds(pipe), steps=8, guidance=1.0, strength=0.25, generator=torch.Generator().manual_seed(0), callbacks=[Spy()])
    assert len(seen) == 2  # the transformer ran twice, not 8 times
    step, x = seen[0]
    schedule = type(pipe.scheduler).from_config(pipe.scheduler.config)
    schedule.set_timesteps(8)
    assert int(step.timestep) == int(schedule.timesteps[6])
    # the region starts from the motion guide noised to the first step that runs
    init, noise = blend_start_latents(latents, torch.Generator().manual_seed(0))
    region = (1 - latents.keep).bool().expand_as(x)
    assert torch.equal(x[region], step.scheduler.add_noise(init, noise, step.timestep.reshape(1))[region])


def test_paste_keeps_outside_pixels_exact():
    source = moving_square()
    decoded = torch.full_like(source, 77)
    mask = box_mask((8, 8, 24, 24), 9, 32, 32)
    out = paste_outside(decoded, source, mask)
    outside = (mask == 0)[..., None].expand_as(source)
    assert torch.equal(out[outside], source[outside])
    assert bool((out[:, 12:20, 12:20] == 77).all())


def test_a_whole_frame_edit_holds_nothing_and_starts_from_the_source(pipe):
    from osp_core.pipelines.denoising import DenoisingCallback

    frames = moving_square()
    inputs = EditInputs(frames, 8.0, torch.ones(9, 32, 32), None, [], "whole-frame", whole_frame=True)
    latents = prepare_latents(pipe.vae, inputs, guide=True)
    assert latents.keep.shape == (1, 1, 3, 4, 4) and not bool(latents.keep.any())  # not even the first latent frame
    assert latents.guide is latents.source and latents.known is latents.source  # no motion-guide encode
    started = []

    class Spy(DenoisingCallback):
        def on_step_begin(self, step, x):
            started.append((step.timestep, x.clone())) if step.is_first else None

    generator = torch.Generator().manual_seed(0)
    final = edit_latents(pipe, latents, _embeds(pipe), steps=4, guidance=4.0, strength=0.5, generator=generator, callbacks=[Spy()])
    noise = torch.randn(latents.source.shape, generator=torch.Generator().manual_seed(0))  # plain noise, as text-to-video
    t, start = started[0]
    assert int(t) == 250  # the last 2 of 4 steps (DDIM: 750, 500, 250, 0)
    assert torch.allclose(start, pipe.scheduler.add_noise(latents.source, noise, torch.tensor([t])), atol=1e-6)
    assert not torch.allclose(final[:, :, 0], latents.source[:, :, 0], atol=1e-2)  # the first latent frame is redrawn too
    # the paste-back would be a no-op over the whole frame: an all-ones mask feathers to all ones
    decoded = pipe.decode_latents(final)[0]
    assert torch.equal(paste_outside(decoded, frames, inputs.mask), decoded)
