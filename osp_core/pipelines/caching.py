"""Caching for sampling: reuse work between denoising steps whose inputs barely change.

- `PyramidAttentionBroadcast` (PAB, Zhao et al. 2024): inside a middle range of timesteps each
  attention's output is reused for a few steps (cross-attention longest, then temporal, then
  spatial). Runs diffusers' own PAB hooks on LatteT2V's attention modules.
- `TeaCache` (Liu et al. 2024): the whole block stack is skipped, and its last residual reused,
  while the accumulated relative change of block 0's timestep-modulated input, rescaled by a
  polynomial fitted per model, stays under a threshold. `TeaCacheCalibration` records what the
  fit needs and `fit_teacache_coefficients` fits it.

Each cache is a `DenoisingCallback` (it follows the loop's timestep and resets per video) and is
attached to the transformer from outside; the model itself knows nothing of caching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .denoising import DenoisingCallback, DenoisingStep
from .t2v_inputs import TEACACHE_MAX_THRESHOLD, check_cache_options



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
    whose forward is unpatchify(self.forward(embed(...))), the model's own three stages."""

    def __init__(self) -> None:
        self.transformer: nn.Module | None = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """(B, C, F, h, w) output of `model` for `inputs` (what `model.embed` returned)."""
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


class TeaCache(BlockStackCache):
    """Skips LatteT2V's block stack while the rescaled, accumulated relative L1 change of block
    0's modulated input stays below `threshold`; the first and last steps always run."""

    method = "teacache"

    def __init__(self, coefficients: list[float], threshold: float) -> None:
        if not 0 < threshold <= TEACACHE_MAX_THRESHOLD:
            raise InputError(f"TeaCache threshold must be in (0, {TEACACHE_MAX_THRESHOLD:g}], got {threshold}", "use e.g. 0.1")
        super().__init__()
        self.coefficients = [float(c) for c in coefficients]
        self.threshold = float(threshold)
        self.step: DenoisingStep | None = None
        self._reset()

    def _reset(self) -> None:
        self.accumulated = 0.0
        self.previous_modulated: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.computed = 0
        self.skipped_steps: list[int] = []  # denoising step indices whose block stack was skipped

    def rescale(self, change: float) -> float:
        """The fitted polynomial (highest power first) at `change`."""
        value = 0.0
        for c in self.coefficients:
            value = value * change + c
        return value

    def detach(self) -> None:
        super().detach()
        self.previous_modulated = self.residual = None

    def on_run_begin(self, timesteps: torch.Tensor) -> None:
        self._reset()

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> None:
        self.step = step

    def on_run_end(self) -> None:
        self.previous_modulated = self.residual = None  # free the memory, keep the counts
        self.step = None

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        modulated = modulated_input(model.transformer_blocks[0], inputs.hidden_states, inputs.modulation_spatial)
        compute = True
        boundary = self.step is None or self.step.is_first or self.step.is_last
        if boundary or self.previous_modulated is None or self.residual is None or self.residual.shape != inputs.hidden_states.shape:
            self.accumulated = 0.0
        else:
            self.accumulated += self.rescale(relative_l1(modulated, self.previous_modulated))
            if self.accumulated < self.threshold:
                compute = False
            else:
                self.accumulated = 0.0
        self.previous_modulated = modulated
        if compute:
            x = model.run_blocks(inputs)
            self.residual = x - inputs.hidden_states
            self.computed += 1
            return x
        self.skipped_steps.append(-1 if self.step is None else self.step.index)
        return inputs.hidden_states + self.residual

    def settings(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "coefficients": self.coefficients}

    def stats(self) -> dict[str, Any]:
        return {"transformer_evaluations": self.computed, "transformer_evaluations_skipped": len(self.skipped_steps)}


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


def fit_teacache_coefficients(pairs: list[tuple[float, float]], degree: int = 4) -> list[float]:
    """Least-squares polynomial y = p(x) through the calibration `pairs`, highest power first."""
    import numpy as np

    if len(pairs) < degree + 1:
        raise InputError(f"{len(pairs)} calibration steps cannot fit a degree-{degree} polynomial", "calibrate with more prompts or steps")
    x, y = (np.array(v, dtype=np.float64) for v in zip(*pairs))
    return [float(c) for c in np.polyfit(x, y, degree)]


def make_cache(method: str, threshold: float | None = None, teacache: tuple[list[float], float] | None = None, pab: PABSettings = PABSettings()) -> SamplingCache | None:
    """The cache for `method` (None for "none"). TeaCache needs the model's (coefficients,
    default threshold); `threshold` overrides the default."""
    method = check_cache_options(method, threshold)
    if method == "none":
        return None
    if method == "pab":
        return PyramidAttentionBroadcast(pab)
    if teacache is None:
        raise InputError(
            "this model has no TeaCache coefficients (teacache_coefficients in its sampling.json)",
            "fit them with `osp t2v calibrate-cache`, or use --cache pab",
        )
    coefficients, default_threshold = teacache
    return TeaCache(coefficients, default_threshold if threshold is None else threshold)

