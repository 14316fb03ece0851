"""The one denoising loop every osp pipeline runs.

`denoise` steps a diffusers scheduler from noise to latents with classifier-free guidance, and
tells its callbacks where it is: caches read the current timestep (`DenoisingStep`), progress
bars count steps, and editing replaces latents between steps (a callback that returns a
tensor replaces the latents). Guidance is decided here too, per step (`Unconditional`): a
callback may drop the unconditional half (a guidance interval) or supply it from earlier
steps (FasterCache), and the model then sees the conditional half alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(model input (B', C, ...), timesteps (B',)) -> predicted noise, same shape as the input."""


@dataclass
class DenoisingStep:
    """Where a denoising run is: step `index` of `num_steps` (0-based), at scheduler timestep
    `timestep` (one of `timesteps`), stepped by `scheduler`. A run begun later in its schedule
    (an edit's cut, `timesteps_from`) skipped its first `offset` steps: it is step
    `schedule_index` of `schedule_steps`, what values fitted per step of a whole run index."""

    index: int
    num_steps: int
    timestep: torch.Tensor
    timesteps: torch.Tensor
    scheduler: Any
    offset: int = 0

    @property
    def schedule_index(self) -> int:
        return self.offset + self.index

    @property
    def schedule_steps(self) -> int:
        return self.offset + self.num_steps

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


class Unconditional(Enum):
    """What a guided step does with the unconditional half of the batch."""

    RUN = "run"  # the model sees both halves: uncond + scale * (cond - uncond)
    ESTIMATE = "estimate"  # the conditional half alone runs; a callback's `on_guidance` supplies uncond
    DROP = "drop"  # no guidance at this step: the conditional prediction alone


class DenoisingCallback:
    """Hooks into `denoise`; override what you need. `on_step_begin` and `on_step_end` may
    return new latents (same shape) to replace the current ones, or None to keep them."""

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        """A new video (batch) starts: reset per-run state."""

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor | None:
        """Before the model runs at `step.timestep`."""
        return None

    def on_step_end(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor | None:
        """After the scheduler stepped; `latents` are those of the next timestep."""
        return None

    def unconditional(self, step: DenoisingStep) -> Unconditional:
        """With guidance, what this step does with the unconditional half (DROP from any
        callback wins, then ESTIMATE; asked before the model runs)."""
        return Unconditional.RUN

    def on_guidance(self, step: DenoisingStep, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor | None:
        """After a guided step's model call: `uncond` is None when it did not run (ESTIMATE),
        and the callback that asked for that returns its estimate."""
        return None

    def on_run_end(self) -> None:
        """The run finished (or failed)."""


class StepProgress(DenoisingCallback):
    """Calls `report(done, total)` after every step (progress bars, cancellation)."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report

    def on_step_end(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.report(step.index + 1, step.num_steps)


class GuidanceInterval(DenoisingCallback):
    """Classifier-free guidance only at steps whose noise level, timestep / the scheduler's
    training timesteps (0 clean .. 1 pure noise), lies in [`low`, `high`] (Kynkaenniemi et
    al. 2024); elsewhere the conditional half runs alone. `dropped` counts those steps."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = float(low), float(high)
        self.dropped = 0

    def noise_level(self, step: DenoisingStep) -> float:
        return float(step.timestep) / int(step.scheduler.config.num_train_timesteps)

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        self.dropped = 0

    def unconditional(self, step: DenoisingStep) -> Unconditional:
        if self.low <= self.noise_level(step) <= self.high:
            return Unconditional.RUN
        self.dropped += 1
        return Unconditional.DROP

    def describe(self) -> dict[str, Any]:
        """What a sidecar records: the interval and the last run's steps without guidance."""
        return {"interval": [self.low, self.high], "unit": "noise level (timestep / training timesteps)", "steps_without_guidance": self.dropped}


def scheduler_step_kwargs(scheduler: Any, generator: torch.Generator | list[torch.Generator] | None, eta: float = 0.0) -> dict[str, Any]:
    """The optional `step` arguments `scheduler` takes (eta for DDIM, generator for stochastic ones)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def timesteps_from(scheduler: Any, first_step: int) -> torch.Tensor:
    """The timesteps that run steps `first_step` onwards of the schedule set on `scheduler`
    (`set_timesteps` called), as a run begun there would: what image-to-image calls strength.
    `denoise(..., timesteps=...)` runs them.

    PNDM is rebuilt, not sliced: its Runge-Kutta start (or, with `skip_prk_steps`, its
    repeated second PLMS timestep) and its history of noise predictions assume the run starts
    at its first timestep; a sliced run would step from timesteps its latents are not at.
    The others are sliced as diffusers' image-to-image pipelines do: the scheduler keeps its
    whole schedule and starts its step index at the cut (`set_begin_index`)."""
    steps = int(scheduler.num_inference_steps)
    if first_step == 0:
        return scheduler.timesteps
    if not 0 < first_step < steps:
        raise ValueError(f"first_step must be in [0, {steps}), got {first_step}")
    if type(scheduler).__name__ == "PNDMScheduler":
        _start_pndm_at(scheduler, steps - first_step)
        return scheduler.timesteps
    begin = first_step * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:]


def _start_pndm_at(scheduler: Any, kept: int) -> None:
    """PNDM's `set_timesteps` timestep lists (diffusers 0.3x-0.4x), over its lowest `kept` timesteps."""
    ascending = scheduler._timesteps[:kept]
    order = scheduler.pndm_order
    if scheduler.config.skip_prk_steps:
        scheduler.prk_timesteps = np.array([])
        scheduler.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
    else:
        if kept < order:
            raise ValueError(f"PNDM needs at least {order} steps to run, got {kept}")
        half = scheduler.config.num_train_timesteps // scheduler.num_inference_steps // 2
        prk = np.array(ascending[-order:]).repeat(2) + np.tile(np.array([0, half]), order)
        scheduler.prk_timesteps = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
        scheduler.plms_timesteps = ascending[:-3][::-1].copy()
    device = scheduler.timesteps.device
    scheduler.timesteps = torch.from_numpy(np.concatenate([scheduler.prk_timesteps, scheduler.plms_timesteps]).astype(np.int64)).to(device)
    scheduler._timesteps = ascending
    scheduler.ets, scheduler.counter, scheduler.cur_model_output, scheduler.cur_sample = [], 0, 0, None


def denoise(
    predict_noise: NoisePredictor,
    scheduler: Any,
    latents: torch.Tensor,
    guidance_scale: float = 1.0,
    step_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[DenoisingCallback] = (),
    timesteps: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Run `timesteps` (default: `scheduler.timesteps`, set beforehand; a later start:
    `timesteps_from`) from `latents` (already scaled by the scheduler's init sigma, or noised
    to the first timestep); returns the final latents. `offset`: the schedule's steps before
    `timesteps` (`DenoisingStep.offset`).

    With `guidance_scale` > 1 the model sees the batch twice, unconditional half first, and
    the prediction is uncond + scale * (cond - uncond), as the original sampler; callbacks may
    make a step run the conditional half alone (`DenoisingCallback.unconditional`), so
    `predict_noise` gets either batch size.
    """
    timesteps = scheduler.timesteps if timesteps is None else timesteps
    do_cfg = guidance_scale > 1.0
    step_kwargs = step_kwargs or {}
    for callback in callbacks:
        callback.on_run_begin(timesteps)
    try:
        for index, t in enumerate(timesteps):
            step = DenoisingStep(index, len(timesteps), t, timesteps, scheduler, offset)
            latents = _apply(callbacks, "on_step_begin", step, latents)
            mode = _unconditional(callbacks, step) if do_cfg else Unconditional.DROP
            model_input = torch.cat([latents] * 2) if mode is Unconditional.RUN else latents
            model_input = scheduler.scale_model_input(model_input, t)
            batch_t = t.expand(model_input.shape[0]) if torch.is_tensor(t) else torch.full((model_input.shape[0],), t, device=latents.device)
            noise = predict_noise(model_input, batch_t)
            if mode is not Unconditional.DROP:
                uncond, cond = noise.chunk(2) if mode is Unconditional.RUN else (None, noise)
                uncond = _guide(callbacks, step, cond, uncond)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            latents = _apply(callbacks, "on_step_end", step, latents)
    finally:
        for callback in callbacks:
            callback.on_run_end()
    return latents


def _unconditional(callbacks: Sequence[DenoisingCallback], step: DenoisingStep) -> Unconditional:
    modes = {callback.unconditional(step) for callback in callbacks}
    return next((mode for mode in (Unconditional.DROP, Unconditional.ESTIMATE) if mode in modes), Unconditional.RUN)


def _guide(callbacks: Sequence[DenoisingCallback], step: DenoisingStep, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor:
    """Every callback sees the guided step; when uncond did not run, one of them estimates it."""
    estimate = None
    for callback in callbacks:
        given = callback.on_guidance(step, cond, uncond)
        if uncond is None and given is not None and estimate is None:
            estimate = given
    if uncond is not None:
        return uncond
    if estimate is None:
        raise ValueError("a callback asked to estimate the unconditional prediction but none returned it")
    return estimate


def _apply(callbacks: Sequence[DenoisingCallback], hook: str, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor:
    for callback in callbacks:
        replaced = getattr(callback, hook)(step, latents)
        if replaced is not None:
            if replaced.shape != latents.shape:
                raise ValueError(f"{type(callback).__name__}.{hook} returned latents of shape {tuple(replaced.shape)}, expected {tuple(latents.shape)}")
            latents = replaced
    return latents
