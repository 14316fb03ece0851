"""Caching for sampling: reuse work between denoising steps whose inputs barely change.

- `PyramidAttentionBroadcast` (PAB, Zhao et al. 2024): inside a middle range of timesteps each
  attention's output is reused for a few steps (cross-attention longest, then temporal, then
  spatial). Runs diffusers' own PAB hooks on LatteT2V's attention modules.
- Block-stack caches (`BlockStackCache`): the whole block stack is skipped, and its last
  residual reused, by a rule each: `TeaCache` (Liu et al. 2024; the accumulated change of
  block 0's modulated input, rescaled by a polynomial fitted per model), `FirstBlockCache`
  (the first pair's residual barely changed), `MagCache` (residual magnitude ratios fitted per
  model) and `EasyCache` (the output change predicted from the measured transformation rate,
  no calibration). `TeaCacheCalibration` / `MagCacheCalibration` record what the fits need.
- `FasterCache`: the unconditional half of guidance is skipped at some steps and estimated
  from the last one that ran, through the denoising loop's guidance seam.

Each cache is a `DenoisingCallback` (it follows the loop's timestep and resets per video) and is
attached to the transformer from outside; the model itself knows nothing of caching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .denoising import DenoisingCallback, DenoisingStep, Unconditional
from .t2v_inputs import CACHE_MAX_THRESHOLD, THRESHOLD_CACHES, check_cache_for_model, check_cache_options



@dataclass(frozen=True)
class PABSettings:
    """Steps each attention output is broadcast over, inside `timestep_range` (exclusive).
    The defaults are the published Open-Sora-Plan v1.1 settings (VideoSys)."""

    spatial: int = 2
    temporal: int = 4
    cross: int = 6
    timestep_range: tuple[int, int] = (100, 850)


class SamplingCache(DenoisingCallback):
    """A cache attached to a transformer for sampling; `stats()` describes the last run."""

    method = "none"

    def attach(self, transformer: nn.Module) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """What a sidecar records: the method, its settings and the last run's counts."""
        return {"method": self.method, **self.settings(), **self.stats()}


# -- Pyramid Attention Broadcast ------------------------------------------------------------

_PAB_HOOK = "pyramid_attention_broadcast"


class PyramidAttentionBroadcast(SamplingCache):
    """PAB through diffusers' hooks, with LatteT2V's block names: `transformer_blocks.N.attn1`
    spatial, `.attn2` cross, `temporal_transformer_blocks.N.attn1` temporal."""

    method = "pab"

    def __init__(self, settings: PABSettings = PABSettings()) -> None:
        self.pab = settings
        self.timestep = -1  # outside every range until the loop starts
        self._modules: list[nn.Module] = []
        self._counters: list[Any] = []
        self.computed = 0
        self.reused = 0
        self.evaluations = 0

    def attach(self, transformer: nn.Module) -> None:
        from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
        from diffusers.models.attention_processor import Attention

        s = self.pab
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=s.spatial,
            temporal_attention_block_skip_range=s.temporal,
            cross_attention_block_skip_range=s.cross,
            spatial_attention_timestep_skip_range=s.timestep_range,
            temporal_attention_timestep_skip_range=s.timestep_range,
            cross_attention_timestep_skip_range=s.timestep_range,
            # anchored: "transformer_blocks" is also a substring of the temporal blocks' names
            spatial_attention_block_identifiers=(r"^transformer_blocks\.",),
            temporal_attention_block_identifiers=(r"^temporal_transformer_blocks\.",),
            cross_attention_block_identifiers=(r"^transformer_blocks\.",),
            current_timestep_callback=lambda: self.timestep,
        )
        apply_pyramid_attention_broadcast(transformer, config)
        self._modules = [m for m in transformer.modules() if isinstance(m, Attention) and _PAB_HOOK in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})]
        # a reused attention returns the very tensor it returned before: count those
        self._counters = [m.register_forward_hook(self._count) for m in self._modules]
        self._last: dict[int, torch.Tensor] = {}
        self._transformer_counter = transformer.register_forward_pre_hook(self._count_evaluation)

    def _count(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        key = id(module)
        if self._last.get(key) is output:
            self.reused += 1
        else:
            self.computed += 1
        self._last[key] = output

    def _count_evaluation(self, module: nn.Module, args: Any) -> None:
        self.evaluations += 1

    def detach(self) -> None:
        for module in self._modules:
            module._diffusers_hook.remove_hook(_PAB_HOOK, recurse=False)
        for handle in [*self._counters, self._transformer_counter]:
            handle.remove()
        self._modules, self._counters, self._last = [], [], {}

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        for module in self._modules:
            module._diffusers_hook.reset_stateful_hooks(recurse=False)
        self._last = {}
        self.computed = self.reused = self.evaluations = 0

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.timestep = int(step.timestep)

    def on_run_end(self) -> None:
        self._last = {}  # drop the references to the last attention outputs
        for module in self._modules:
            module._diffusers_hook.reset_stateful_hooks(recurse=False)

    def settings(self) -> dict[str, Any]:
        return {"broadcast_steps": {"spatial": self.pab.spatial, "temporal": self.pab.temporal, "cross": self.pab.cross}, "timestep_range": list(self.pab.timestep_range)}

    def stats(self) -> dict[str, Any]:
        return {"transformer_evaluations": self.evaluations, "attention_computed": self.computed, "attention_reused": self.reused}


# -- TeaCache -------------------------------------------------------------------------------

_BLOCK_STACK_HOOK = "osp_block_stack_cache"


def modulated_input(block: nn.Module, hidden_states: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
    """What block 0 feeds its self-attention: norm1(x) * (1 + scale_msa) + shift_msa (the
    AdaLN-single modulation of diffusers' BasicTransformerBlock)."""
    shift, scale = (block.scale_shift_table[None] + modulation.reshape(hidden_states.shape[0], 6, -1)).chunk(6, dim=1)[:2]
    return block.norm1(hidden_states) * (1 + scale) + shift


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |current - previous| / mean |previous|, in float32."""
    previous = previous.float()
    return float((current.float() - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


class BlockStackCache(SamplingCache):
    """A cache that decides how LatteT2V's block stack runs: attached as a diffusers ModelHook
    whose forward is unpatchify(self.forward(embed(...))), the model's own three stages. The
    decision runs outside the blocks, so compiled blocks (`--compile`) stay whole graphs.

    Skipping caches keep the last residual (block-stack output minus input) and count what
    they ran; the first and last steps always run, and so does a step whose batch differs
    from the kept residual's (guidance turned on or off between steps)."""

    def __init__(self) -> None:
        self.transformer: nn.Module | None = None
        self.step: DenoisingStep | None = None
        self._reset()

    def _reset(self) -> None:
        self.residual: torch.Tensor | None = None
        self.computed = 0
        self.skipped_steps: list[int] = []  # denoising step indices whose block stack was skipped

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """(B*F, P, D) block-stack output of `model` for `inputs` (what `model.embed` returned)."""
        raise NotImplementedError

    def attach(self, transformer: nn.Module) -> None:
        from diffusers.hooks import HookRegistry, ModelHook

        from ..models.latte_t2v import LatteT2VOutput

        owner = self

        class Hook(ModelHook):
            def new_forward(self, module, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask=None, use_image_num=0, enable_temporal_attentions=True, return_dict=True):
                inputs = module.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, use_image_num, enable_temporal_attentions)
                out = module.unpatchify(owner.forward(module, inputs), inputs)
                return LatteT2VOutput(sample=out) if return_dict else (out,)

        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(Hook(), _BLOCK_STACK_HOOK)
        self.transformer = transformer

    def detach(self) -> None:
        if self.transformer is not None:
            self.transformer._diffusers_hook.remove_hook(_BLOCK_STACK_HOOK, recurse=False)
            self.transformer = None
        self.release()

    def release(self) -> None:
        """Drop the tensors kept between steps (the counts stay)."""
        self.residual = None

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        self.release()
        self._reset()

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.step = step

    def on_run_end(self) -> None:
        self.release()
        self.step = None

    def must_compute(self, inputs: Any, *kept: torch.Tensor | None) -> bool:
        """The first or last step, or a tensor kept from an earlier step missing or of another shape."""
        boundary = self.step is None or self.step.is_first or self.step.is_last
        return boundary or self.residual is None or any(k is None or k.shape != inputs.hidden_states.shape for k in (self.residual, *kept))

    def compute(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Run every block pair and keep the residual."""
        x = model.run_blocks(inputs)
        self.residual = x - inputs.hidden_states
        self.computed += 1
        return x

    def reuse(self, inputs: Any) -> torch.Tensor:
        """Skip the block stack: the input plus the kept residual."""
        self.skipped_steps.append(-1 if self.step is None else self.step.index)
        return inputs.hidden_states + self.residual

    def stats(self) -> dict[str, Any]:
        return {"transformer_evaluations": self.computed, "transformer_evaluations_skipped": len(self.skipped_steps)}


class TeaCache(BlockStackCache):
    """Skips LatteT2V's block stack while the rescaled, accumulated relative L1 change of block
    0's modulated input stays below `threshold` (0 never skips); the first and last steps always run.

    The polynomial is trusted only where it rises from 0 (`trusted_change`): a fit over the small
    changes of a many-step schedule can turn down and below zero past them, and a few-step
    schedule's large changes would then accumulate nothing and skip every step. A change beyond
    that point runs the step, and a rescaled change never counts below zero."""

    method = "teacache"

    def __init__(self, coefficients: list[float], threshold: float) -> None:
        _check_threshold("TeaCache", threshold)
        self.coefficients = [float(c) for c in coefficients]
        self.threshold = float(threshold)
        self.trusted_change = polynomial_rise_end(self.coefficients)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.accumulated = 0.0
        self.previous_modulated: torch.Tensor | None = None

    def rescale(self, change: float) -> float:
        """The fitted polynomial (highest power first) at `change`."""
        value = 0.0
        for c in self.coefficients:
            value = value * change + c
        return value

    def release(self) -> None:
        super().release()
        self.previous_modulated = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        modulated = modulated_input(model.transformer_blocks[0], inputs.hidden_states, inputs.modulation_spatial)
        previous, self.previous_modulated = self.previous_modulated, modulated
        if self.must_compute(inputs, previous):
            self.accumulated = 0.0
        else:
            change = relative_l1(modulated, previous)
            self.accumulated += max(self.rescale(change), 0.0)
            if self.threshold > 0 and self.accumulated < self.threshold and change <= self.trusted_change:
                return self.reuse(inputs)
            self.accumulated = 0.0
        return self.compute(model, inputs)

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "coefficients": self.coefficients}


class FirstBlockCache(BlockStackCache):
    """First Block Cache (ParaAttention; diffusers' `FirstBlockCacheConfig`): the first block
    pair always runs, and the rest is skipped, its last residual added to the first pair's
    output, while the first pair's residual differs from the one of the last fully computed
    step by a relative L1 change under `threshold` (0 never skips).

    diffusers' own hook cannot run LatteT2V: it treats `transformer_blocks` then
    `temporal_transformer_blocks` as one chain, while LatteT2V interleaves them, switches the
    token layout between them and adds temporal positions inside the first pair; this is the
    same rule on LatteT2V's block pairs. A skipped evaluation still ran one pair of N."""

    method = "fbcache"

    def __init__(self, threshold: float) -> None:
        _check_threshold("FirstBlockCache", threshold)
        self.threshold = float(threshold)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.first_residual: torch.Tensor | None = None

    def release(self) -> None:
        super().release()
        self.first_residual = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        first = model.run_blocks(inputs, pairs=slice(0, 1))
        first_residual = first - inputs.hidden_states
        if not self.must_compute(inputs, self.first_residual) and self.threshold > 0 and relative_l1(first_residual, self.first_residual) < self.threshold:
            self.skipped_steps.append(-1 if self.step is None else self.step.index)
            return first + self.residual  # here the residual of the pairs after the first
        x = model.run_blocks(inputs, pairs=slice(1, None), hidden_states=first)
        self.residual, self.first_residual = x - first, first_residual
        self.computed += 1
        return x

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


def interpolate_ratios(ratios: list[float], steps: int) -> list[float]:
    """`ratios` (one per step of a fitted run) resampled to `steps` by nearest neighbour, as
    MagCache does for another step count."""
    if steps == 1:
        return ratios[-1:]
    scale = (len(ratios) - 1) / (steps - 1)
    return [ratios[round(i * scale)] for i in range(steps)]


class MagCache(BlockStackCache):
    """MagCache (Ma et al. 2025): the residual's magnitude shrinks from step to step by a
    ratio fitted per model (`ratios`, one per step; `osp t2v calibrate-cache --method
    magcache`). From step `retention` x steps on, the block stack is skipped while the
    accumulated error sum |1 - product of the ratios since the last computed step| stays under
    `threshold` (0 never skips) and at most `max_skip` steps in a row are skipped. Steps count
    over the whole schedule (`DenoisingStep.schedule_index`): an edit's run from its cut takes
    the ratios of the steps it runs."""

    method = "magcache"

    def __init__(self, ratios: list[float], threshold: float, max_skip: int = 3, retention: float = 0.2) -> None:
        _check_threshold("MagCache", threshold)
        self.ratios = [float(r) for r in ratios]
        self.threshold, self.max_skip, self.retention = float(threshold), int(max_skip), float(retention)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._restart()

    def _restart(self) -> None:
        self.ratio, self.error, self.run_length = 1.0, 0.0, 0

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        step = self.step
        # ratios are per step of a whole run: a run begun at a cut (an edit) indexes them from there
        if step is None or self.must_compute(inputs) or step.schedule_index < int(self.retention * step.schedule_steps + 0.5):
            self._restart()
            return self.compute(model, inputs)
        self.ratio *= interpolate_ratios(self.ratios, step.schedule_steps)[step.schedule_index]
        self.run_length += 1
        self.error += abs(1.0 - self.ratio)
        if self.threshold > 0 and self.error < self.threshold and self.run_length <= self.max_skip:
            return self.reuse(inputs)
        self._restart()
        return self.compute(model, inputs)

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_skip_steps": self.max_skip, "retention": self.retention, "fitted_steps": len(self.ratios)}


class EasyCache(BlockStackCache):
    """A calibration-free adaptive cache in the EasyCache manner (Zhou et al. 2025): after a
    warm-up (the first `warmup` fraction of the steps, at least two), the block stack's
    transformation rate k = |change of output| / |change of input| between the last two
    computed steps predicts each step's relative output change, k |x_t - x_t-1| / |y_last|;
    the stack is skipped, its last residual reused, while the accumulated prediction stays
    under `threshold` (0 never skips). The first and last steps always run."""

    method = "easycache"

    def __init__(self, threshold: float, warmup: float = 0.1) -> None:
        _check_threshold("EasyCache", threshold)
        self.threshold, self.warmup = float(threshold), float(warmup)
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self.accumulated = 0.0
        self.rate: float | None = None
        self.previous_input: torch.Tensor | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) of the last computed step

    def release(self) -> None:
        super().release()
        self.previous_input = self.last = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        x = inputs.hidden_states
        previous, self.previous_input = self.previous_input, x
        warm = self.step is None or self.step.index < max(2, math.ceil(self.warmup * self.step.num_steps))
        if warm or self.rate is None or self.last is None or self.must_compute(inputs, previous):
            self.accumulated = 0.0
        else:
            change = float((x - previous).float().abs().mean())
            self.accumulated += self.rate * change / max(float(self.last[1].float().abs().mean()), 1e-12)
            if self.threshold > 0 and self.accumulated < self.threshold:
                return self.reuse(inputs)
            self.accumulated = 0.0
        out = self.compute(model, inputs)
        if self.last is not None and self.last[0].shape == x.shape:
            input_change = float((x - self.last[0]).float().abs().mean())
            self.rate = float((out - self.last[1]).float().abs().mean()) / input_change if input_change > 0 else None
        self.last = (x, out)
        return out

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "warmup": self.warmup}


def _check_threshold(name: str, threshold: float) -> None:
    if not (math.isfinite(threshold) and 0 <= threshold <= CACHE_MAX_THRESHOLD):
        raise InputError(f"{name} threshold must be in [0, {CACHE_MAX_THRESHOLD:g}], got {threshold}", "use e.g. 0.1 (0 never skips)")


class TeaCacheCalibration(BlockStackCache):
    """Runs every step in full and records, per step after the first, the relative L1 change of
    block 0's modulated input (x) and of the transformer output (y): what TeaCache's
    polynomial maps one to the other with."""

    method = "teacache-calibration"

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[float, float]] = []
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        self._previous = None

    def on_run_end(self) -> None:
        self._previous = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        modulated = modulated_input(model.transformer_blocks[0], inputs.hidden_states, inputs.modulation_spatial)
        x = model.run_blocks(inputs)
        out = model.unpatchify(x, inputs)  # the model's output, what TeaCache's fit maps to
        if self._previous is not None:
            self.pairs.append((relative_l1(modulated, self._previous[0]), relative_l1(out, self._previous[1])))
        self._previous = (modulated, out)
        return x


def polynomial_rise_end(coefficients: list[float]) -> float:
    """The first x > 0 where the polynomial (highest power first) stops rising: the smallest
    positive real root of its derivative at which the derivative changes sign; inf if it rises
    for every x > 0 (and 0 if it falls from the start)."""
    import numpy as np

    poly = np.poly1d(np.array(coefficients, dtype=np.float64))
    slope = poly.deriv()  # a constant's is 0 everywhere, without roots: inf below
    if slope(0.0) < 0:
        return 0.0
    for root in sorted(r.real for r in slope.roots if abs(r.imag) < 1e-12 and r.real > 0):
        if slope(root * (1 + 1e-9) + 1e-15) < 0:
            return float(root)
    return math.inf


def fit_teacache_coefficients(pairs: list[tuple[float, float]], degree: int = 4) -> list[float]:
    """Least-squares polynomial y = p(x) through the calibration `pairs`, highest power first."""
    import numpy as np

    if len(pairs) < degree + 1:
        raise InputError(f"{len(pairs)} calibration steps cannot fit a degree-{degree} polynomial", "calibrate with more prompts or steps")
    x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs))
    return [float(c) for c in np.polyfit(x, y, degree)]


class MagCacheCalibration(BlockStackCache):
    """Runs every step in full and records, per run, each step's magnitude ratio: the mean over
    tokens of |residual_t| / |residual_t-1| (1 for the first step), the residual being the
    block stack's output minus its input."""

    method = "magcache-calibration"

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[list[float]] = []

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        super().on_run_begin(timesteps)
        self.runs.append([])

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        previous = self.residual
        x = self.compute(model, inputs)
        if previous is None or previous.shape != self.residual.shape:
            ratio = 1.0
        else:
            ratio = float((torch.linalg.vector_norm(self.residual.float(), dim=-1) / (torch.linalg.vector_norm(previous.float(), dim=-1) + 1e-8)).mean())
        self.runs[-1].append(ratio)
        return x


def fit_magcache_ratios(runs: list[list[float]]) -> list[float]:
    """Each step's ratio averaged over the calibration `runs` (all of one step count)."""
    if not runs or len(runs[0]) < 2:
        raise InputError("MagCache calibration needs at least one run of 2 steps or more", "calibrate with more steps")
    if len({len(run) for run in runs}) != 1:
        raise InputError("MagCache calibration runs have different step counts", "calibrate every prompt with the same --steps")
    return [sum(values) / len(values) for values in zip(*runs)]


# -- FasterCache: the unconditional half reused --------------------------------------------


@dataclass(frozen=True)
class FasterCacheSettings:
    """FasterCache's CFG cache (Lv et al. 2024; diffusers' defaults): inside `timestep_range`
    (exclusive) the unconditional half runs every `every`-th step only; in between it is the
    conditional prediction plus the last computed difference (uncond - cond), its low
    frequencies weighted `alpha_low` inside `low_range` and its high ones `alpha_high` inside
    `high_range` (1 elsewhere)."""

    every: int = 5
    timestep_range: tuple[int, int] = (-1, 641)
    alpha_low: float = 1.1
    low_range: tuple[int, int] = (99, 901)
    alpha_high: float = 1.1
    high_range: tuple[int, int] = (-1, 301)


def _low_frequencies(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H, W) mask of the centred (fftshift-ed) spectrum within radius min(H, W) // 5."""
    y, x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return (x - width // 2) ** 2 + (y - height // 2) ** 2 <= (min(height, width) // 5) ** 2


class FasterCache(SamplingCache):
    """Reuses the unconditional half of guidance (FasterCache's CFG cache) through the
    denoising loop's guidance seam: a step that skips it runs the conditional half alone
    (half the batch) and estimates the unconditional prediction (`FasterCacheSettings`)."""

    method = "fastercache"

    def __init__(self, settings: FasterCacheSettings = FasterCacheSettings()) -> None:
        if settings.every < 1:
            raise InputError(f"FasterCache's unconditional interval must be >= 1, got {settings.every}", "use e.g. 5 (1 never skips)")
        self.faster = settings
        self._reset()

    def _reset(self) -> None:
        self.delta: torch.Tensor | None = None  # uncond - cond at the last step that ran both
        self.guided = self.estimated = self.evaluations = 0

    def attach(self, transformer: nn.Module) -> None:
        """Nothing to hook: the loop asks this cache at each step."""

    def detach(self) -> None:
        self.delta = None

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        self._reset()

    def on_run_end(self) -> None:
        self.delta = None

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.evaluations += 1

    def unconditional(self, step: DenoisingStep) -> Unconditional:
        low, high = self.faster.timestep_range
        if self.delta is not None and low < float(step.timestep) < high and self.guided % self.faster.every != 0:
            return Unconditional.ESTIMATE
        return Unconditional.RUN

    def on_guidance(self, step: DenoisingStep, cond: torch.Tensor, uncond: torch.Tensor | None) -> torch.Tensor | None:
        self.guided += 1
        if uncond is not None:
            self.delta = uncond - cond
            return None
        self.estimated += 1
        return cond + self.weighted_delta(float(step.timestep)).to(cond.dtype)

    def weighted_delta(self, t: float) -> torch.Tensor:
        """The kept difference with its low and high frequencies (per frame) weighted for `t`."""
        s = self.faster
        w_low = s.alpha_low if s.low_range[0] < t < s.low_range[1] else 1.0
        w_high = s.alpha_high if s.high_range[0] < t < s.high_range[1] else 1.0
        if w_low == w_high == 1.0:
            return self.delta
        spectrum = torch.fft.fftshift(torch.fft.fft2(self.delta.float()), dim=(-2, -1))
        low = _low_frequencies(*self.delta.shape[-2:], self.delta.device)
        weights = torch.where(low, torch.tensor(w_low, device=low.device), torch.tensor(w_high, device=low.device))
        return torch.fft.ifft2(torch.fft.ifftshift(spectrum * weights, dim=(-2, -1))).real

    def settings(self) -> dict[str, Any]:
        s = self.faster
        return {"unconditional_every": s.every, "timestep_range": list(s.timestep_range), "alpha_low": s.alpha_low, "low_range": list(s.low_range), "alpha_high": s.alpha_high, "high_range": list(s.high_range)}

    def stats(self) -> dict[str, Any]:
        return {"transformer_evaluations": self.evaluations, "unconditional_estimated": self.estimated}


# -- choosing a cache -----------------------------------------------------------------------


def make_cache(
    method: str,
    threshold: float | None = None,
    model: Mapping[str, Any] | None = None,
    pab: PABSettings = PABSettings(),
    faster: FasterCacheSettings = FasterCacheSettings(),
) -> SamplingCache | None:
    """The cache for `method` (None for "none"). `model` holds the model's sampling settings
    (its sampling.json: TeaCache's coefficients and threshold, MagCache's ratios);
    `threshold` overrides a threshold cache's default."""
    from .repository import RELEASED_TEACACHE_THRESHOLD

    method = check_cache_options(method, threshold)
    model = model or {}
    check_cache_for_model(method, dict(model))
    if method in THRESHOLD_CACHES and threshold is None:
        threshold = float(model.get("teacache_threshold", RELEASED_TEACACHE_THRESHOLD)) if method == "teacache" else THRESHOLD_CACHES[method]
    caches = {
        "none": lambda: None,
        "pab": lambda: PyramidAttentionBroadcast(pab),
        "teacache": lambda: TeaCache(list(model["teacache_coefficients"]), threshold),
        "fbcache": lambda: FirstBlockCache(threshold),
        "magcache": lambda: MagCache(list(model["magcache_ratios"]), threshold),
        "easycache": lambda: EasyCache(threshold),
        "fastercache": lambda: FasterCache(faster),
    }
    return caches[method]()
