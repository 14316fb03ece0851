"""The one denoising loop: what hooks see, latents replaced between steps, and the pipeline's
results unchanged by it."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from osp_core.pipelines.denoising import DenoisingCallback, denoise, scheduler_step_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(DenoisingCallback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_run_begin(self, timesteps):
        self.events.append(("begin", len(timesteps)))

    def on_step_begin(self, step, latents):
        self.events.append(("step", step.index, int(step.timestep), step.is_first, step.is_last))

    def on_step_end(self, step, latents):
        self.events.append(("end", step.index))

    def on_run_end(self):
        self.events.append(("finish",))


def _toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x + t.float().view(-1, 1, 1) / 1000


def test_hooks_see_every_timestep_in_order():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(5)
    recorder = Recorder()
    denoise(_toy_model, scheduler, torch.randn(1, 2, 3), callbacks=[recorder])
    steps = [e for e in recorder.events if e[0] == "step"]
    assert recorder.events[0] == ("begin", 5) and recorder.events[-1] == ("finish",)
    assert [s[2] for s in steps] == [int(t) for t in scheduler.timesteps]
    assert [s[1] for s in steps] == list(range(5))
    assert steps[0][3] and steps[-1][4] and not any(s[3] or s[4] for s in steps[1:-1])
    # every step's begin comes before its end
    assert [e for e in recorder.events if e[0] in ("step", "end")][::2] == steps


def test_guidance_doubles_the_batch_uncond_first():
    seen = []

    def model(x, t):
        seen.append(x.shape[0])
        return torch.cat([torch.zeros_like(x[:1]), torch.ones_like(x[1:])])

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(2)
    # prediction = uncond + g * (cond - uncond) = 0 + 3 * (1 - 0) = 3 at every step
    expected_scheduler = DDIMScheduler()
    expected_scheduler.set_timesteps(2)
    latents = torch.randn(1, 2, 2)
    expected = latents
    for t in expected_scheduler.timesteps:
        expected = expected_scheduler.step(torch.full_like(expected, 3.0), t, expected, return_dict=False)[0]
    out = denoise(model, scheduler, latents, guidance_scale=3.0)
    assert seen == [2, 2] and torch.allclose(out, expected)


def test_a_callback_replaces_latents_between_steps():
    """Editing's way in: known latents blended in after every step."""

    class KeepLeftHalf(DenoisingCallback):
        def __init__(self, known):
            self.known = known
            self.calls = 0

        def on_step_end(self, step, latents):
            self.calls += 1
            replaced = latents.clone()
            replaced[..., :2] = self.known[..., :2]
            return replaced

    known = torch.full((1, 2, 4), 5.0)
    scheduler = PNDMScheduler()
    scheduler.set_timesteps(6)
    callback = KeepLeftHalf(known)
    out = denoise(_toy_model, scheduler, torch.randn(1, 2, 4), callbacks=[callback])
    assert callback.calls == len(scheduler.timesteps)
    assert torch.equal(out[..., :2], known[..., :2]) and not torch.equal(out[..., 2:], known[..., 2:])


def test_a_callback_returning_the_wrong_shape_is_an_error():
    class Bad(DenoisingCallback):
        def on_step_begin(self, step, latents):
            return latents[..., :1]

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(2)
    finished = Recorder()
    with pytest.raises(ValueError, match="Bad.on_step_begin returned latents of shape"):
        denoise(_toy_model, scheduler, torch.randn(1, 2, 3), callbacks=[Bad(), finished])
    assert finished.events[-1] == ("finish",)  # on_run_end runs on failure too


def test_step_kwargs_follow_the_scheduler():
    generator = torch.Generator()
    assert scheduler_step_kwargs(DDIMScheduler(), generator, eta=0.5) == {"eta": 0.5, "generator": generator}
    assert scheduler_step_kwargs(PNDMScheduler(), generator) == {}


def _loop_before_the_seam(pipe, embeds, steps, generator, guidance=7.5):
    """The pipeline's own loop as it was written before `denoise` existed (kept here to prove
    the factored-out loop computes the same bits)."""
    device = pipe.transformer.device
    states = torch.cat([embeds.negative, embeds.prompt])
    mask = torch.cat([embeds.negative_mask, embeds.prompt_mask])
    mask = None if bool(mask.all()) else mask
    pipe.scheduler.set_timesteps(steps, device=device)
    latents = pipe.prepare_latents(1, 9, 32, 32, device, generator)
    channels = pipe.transformer.config.in_channels
    for t in pipe.scheduler.timesteps:
        model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise = pipe.transformer(model_input, t.expand(2), states, encoder_attention_mask=mask, return_dict=False)[0].float()
        uncond, cond = noise.chunk(2)
        noise = (uncond + guidance * (cond - uncond))[:, :channels]
        latents = pipe.scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


def test_pipeline_through_the_loop_is_bit_identical_to_the_loop_it_replaced(reference_dir):
    from osp_core.pipelines.t2v import T2VPipeline

    pipe = T2VPipeline.from_pretrained(reference_dir / "pipeline" / "tiny-osp-v1.1.0", version="9x32x32")
    pipe.set_progress_bar_config(disable=True)
    embeds = pipe.encode_prompt("a red balloon over the sea", "blurry")
    before = _loop_before_the_seam(pipe, embeds, 6, torch.Generator().manual_seed(3))
    now = pipe(prompt_embeds=embeds, num_frames=9, height=32, width=32, num_inference_steps=6, generator=torch.Generator().manual_seed(3), output_type="latent").frames
    assert torch.equal(now, before)
