"""The one denoising loop: what hooks see, latents replaced between steps, and the pipeline's
results unchanged by it."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from osp_core.pipelines.denoising import DenoisingCallback, denoise, scheduler_step_kwargs, timesteps_from

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


def _oracle_run(scheduler, first_step: int, timesteps=None) -> torch.Tensor:
    """From x0 noised to the first timestep run, denoise with the exact noise: the result
    depends only on where the run ends, if the scheduler steps from where its latents are
    (20 steps: PNDM's Runge-Kutta midpoints are exact only for an even step ratio)."""
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 3, 4, 4, generator=generator), torch.randn(1, 4, 3, 4, 4, generator=generator)
    scheduler.set_timesteps(20)
    timesteps = timesteps_from(scheduler, first_step) if timesteps is None else timesteps(scheduler)
    alphas = scheduler.alphas_cumprod

    def exact_noise(x, t):
        a = alphas[int(t[0])]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    start = scheduler.add_noise(x0, eps, timesteps[:1])
    return denoise(exact_noise, scheduler, start, timesteps=timesteps)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PNDMScheduler(),  # Runge-Kutta start, as the original sampler
        lambda: PNDMScheduler(skip_prk_steps=True),
        lambda: DDIMScheduler(),
        lambda: EulerDiscreteScheduler(),
        lambda: DPMSolverMultistepScheduler(),
    ],
    ids=["pndm", "pndm-plms", "ddim", "euler", "dpm-multistep"],
)
def test_a_run_started_late_ends_where_the_whole_run_ends(make):
    whole = _oracle_run(make(), 0)
    late = _oracle_run(make(), 12)
    torch.testing.assert_close(late, whole, rtol=0, atol=1e-5)


def test_pndm_cannot_be_sliced_like_the_others():
    # what the rebuild is for: a sliced PNDM steps from timesteps its latents are not at
    whole = _oracle_run(PNDMScheduler(), 0)
    for scheduler in (PNDMScheduler(), PNDMScheduler(skip_prk_steps=True)):
        sliced = _oracle_run(scheduler, 12, timesteps=lambda s: s.timesteps[12:])
        assert (sliced - whole).abs().max() > 0.05


def test_a_late_start_runs_the_remaining_steps_only():
    scheduler = PNDMScheduler()
    scheduler.set_timesteps(12)
    whole = scheduler.timesteps.clone()
    late = timesteps_from(scheduler, 7)
    # 5 steps left: 3 Runge-Kutta steps of 4 evaluations, then 2 PLMS steps, over the 5 lowest timesteps
    assert len(late) == 3 * 4 + 2 and int(late[0]) == int(whole[-5]) and int(late[-1]) == 0
    assert set(late.tolist()) - set(whole.tolist()) <= {int(t) + 1000 // 12 // 2 for t in late}
    ddim = DDIMScheduler()
    ddim.set_timesteps(12)
    assert torch.equal(timesteps_from(ddim, 7), ddim.timesteps[7:]) and len(ddim.timesteps) == 12
    assert timesteps_from(ddim, 0) is ddim.timesteps
    for bad in (-1, 12):
        with pytest.raises(ValueError, match="first_step"):
            timesteps_from(ddim, bad)
    short = PNDMScheduler()
    short.set_timesteps(12)
    with pytest.raises(ValueError, match="at least 4"):
        timesteps_from(short, 10)


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
