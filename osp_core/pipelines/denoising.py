"""The one denoising loop every osp pipeline runs.

`denoise` steps a diffusers scheduler from noise to latents with classifier-free guidance, and
tells its callbacks where it is: caches read the current timestep (`DenoisingStep`), progress
bars count steps, and editing replaces latents between steps (a callback that returns a
tensor replaces the latents).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(model input (B', C, ...), timesteps (B',)) -> predicted noise, same shape as the input."""


@dataclass
class DenoisingStep:
    """Where a denoising run is: step `index` of `num_steps` (0-based), at scheduler timestep
    `timestep` (one of `timesteps`), stepped by `scheduler`."""

    index: int
    num_steps: int
    timestep: torch.Tensor
    timesteps: torch.Tensor
    scheduler: Any

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.num_steps - 1


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

    def on_run_end(self) -> None:
        """The run finished (or failed)."""


class StepProgress(DenoisingCallback):
    """Calls `report(done, total)` after every step (progress bars, cancellation)."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report

    def on_step_end(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.report(step.index + 1, step.num_steps)


def scheduler_step_kwargs(scheduler: Any, generator: torch.Generator | list[torch.Generator] | None, eta: float = 0.0) -> dict[str, Any]:
    """The optional `step` arguments `scheduler` takes (eta for DDIM, generator for stochastic ones)."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    predict_noise: NoisePredictor,
    scheduler: Any,
    latents: torch.Tensor,
    guidance_scale: float = 1.0,
    step_kwargs: dict[str, Any] | None = None,
    callbacks: Sequence[DenoisingCallback] = (),
) -> torch.Tensor:
    """Run `scheduler.timesteps` (set beforehand) from `latents` (already scaled by the
    scheduler's init sigma); returns the final latents.

    With `guidance_scale` > 1 the model sees the batch twice, unconditional half first, and
    the prediction is uncond + scale * (cond - uncond), as the original sampler.
    """
    timesteps = scheduler.timesteps
    do_cfg = guidance_scale > 1.0
    step_kwargs = step_kwargs or {}
    for callback in callbacks:
        callback.on_run_begin(timesteps)
    try:
        for index, t in enumerate(timesteps):
            step = DenoisingStep(index, len(timesteps), t, timesteps, scheduler)
            latents = _apply(callbacks, "on_step_begin", step, latents)
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            batch_t = t.expand(model_input.shape[0]) if torch.is_tensor(t) else torch.full((model_input.shape[0],), t, device=latents.device)
            noise = predict_noise(model_input, batch_t)
            if do_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            latents = _apply(callbacks, "on_step_end", step, latents)
    finally:
        for callback in callbacks:
            callback.on_run_end()
    return latents


def _apply(callbacks: Sequence[DenoisingCallback], hook: str, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor:
    for callback in callbacks:
        replaced = getattr(callback, hook)(step, latents)
        if replaced is not None:
            if replaced.shape != latents.shape:
                raise ValueError(f"{type(callback).__name__}.{hook} returned latents of shape {tuple(replaced.shape)}, expected {tuple(latents.shape)}")
            latents = replaced
    return latents
