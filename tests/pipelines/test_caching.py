"""Sampling caches: off is bit-identical, PAB hooks the right attentions on its schedule,
TeaCache skips steps by its rule, calibration fits, and on builtin:shapes the cached videos
keep what the uncached ones show."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from osp_core.errors import InputError
from osp_core.pipelines.caching import (
    EasyCache,
    FasterCache,
    FasterCacheSettings,
    FirstBlockCache,
    MagCache,
    MagCacheCalibration,
    PABSettings,
    PyramidAttentionBroadcast,
    TeaCache,
    TeaCacheCalibration,
    fit_magcache_ratios,
    fit_teacache_coefficients,
    interpolate_ratios,
    make_cache,
    polynomial_rise_end,
)
from osp_core.pipelines.denoising import DenoisingStep, GuidanceInterval
from osp_core.pipelines.t2v_inputs import check_cache_for_model, check_cache_options, parse_guidance_interval

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(reference_dir):
    from osp_core.pipelines.t2v import T2VPipeline

    pipe = T2VPipeline.from_pretrained(reference_dir / "pipeline" / "tiny-osp-v1.1.0", version="9x32x32")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def embeds(pipe):
    return pipe.encode_prompt("a red balloon over the sea", "blurry")


def _evaluations(pipe, steps=12):
    """Transformer evaluations of a `steps`-step run (PNDM starts with Runge-Kutta steps)."""
    pipe.scheduler.set_timesteps(steps)
    return len(pipe.scheduler.timesteps)


def _sample(pipe, embeds, cache=None, steps=12, seed=5):
    """Latents of a `steps`-step run with `cache` (a SamplingCache, or any denoising callback)."""
    hooked = getattr(cache, "attach", None) is not None
    if hooked:
        cache.attach(pipe.transformer)
    try:
        return pipe(
            prompt_embeds=embeds, num_frames=9, height=32, width=32, num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed), output_type="latent", callbacks=[cache] if cache else [],
        ).frames  # fmt: skip
    finally:
        if hooked:
            cache.detach()


def test_detached_caches_leave_the_model_as_it_was(pipe, embeds):
    before = _sample(pipe, embeds)
    _sample(pipe, embeds, PyramidAttentionBroadcast())
    _sample(pipe, embeds, TeaCache([1.0, 0.0], 1.0))
    assert torch.equal(_sample(pipe, embeds), before)
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in pipe.transformer.modules())


def test_pab_hooks_spatial_temporal_and_cross_attention(pipe):
    cache = PyramidAttentionBroadcast(PABSettings(spatial=2, temporal=4, cross=6))
    cache.attach(pipe.transformer)
    try:
        ranges = {}
        for name, module in pipe.transformer.named_modules():
            hook = getattr(module, "_diffusers_hook", None)
            if hook is not None and "pyramid_attention_broadcast" in hook.hooks:
                ranges[name] = hook.hooks["pyramid_attention_broadcast"].block_skip_range
    finally:
        cache.detach()
    layers = pipe.transformer.config.num_layers
    expected = {}
    for i in range(layers):
        expected[f"transformer_blocks.{i}.attn1"] = 2
        expected[f"transformer_blocks.{i}.attn2"] = 6
        expected[f"temporal_transformer_blocks.{i}.attn1"] = 4
    assert ranges == expected


def test_pab_outside_its_timesteps_changes_nothing(pipe, embeds):
    never = PyramidAttentionBroadcast(PABSettings(timestep_range=(2000, 3000)))
    assert torch.equal(_sample(pipe, embeds, never), _sample(pipe, embeds))
    assert never.stats()["attention_reused"] == 0


def test_pab_recomputes_each_attention_every_n_steps(pipe, embeds):
    cache = PyramidAttentionBroadcast(PABSettings(spatial=2, temporal=4, cross=6, timestep_range=(-1, 1001)))
    out = _sample(pipe, embeds, cache, steps=12)
    stats = cache.stats()
    evaluations = stats["transformer_evaluations"]
    layers = pipe.transformer.config.num_layers
    computed = layers * sum(math.ceil(evaluations / n) for n in (2, 4, 6))
    assert evaluations == _evaluations(pipe)
    assert stats["attention_computed"] == computed
    assert stats["attention_computed"] + stats["attention_reused"] == 3 * layers * evaluations
    assert torch.isfinite(out).all() and not torch.equal(out, _sample(pipe, embeds))


def test_teacache_that_never_skips_is_bit_identical(pipe, embeds):
    cache = TeaCache([1.0, 0.0], 1e-9)  # rescale(x) = x, any change exceeds the threshold
    assert torch.equal(_sample(pipe, embeds, cache), _sample(pipe, embeds))
    assert cache.stats() == {"transformer_evaluations": _evaluations(pipe), "transformer_evaluations_skipped": 0}


def test_teacache_skips_by_accumulated_change_but_never_the_first_or_last_step(pipe, embeds):
    cache = TeaCache([1.0, 0.0], 1.0)
    out = _sample(pipe, embeds, cache, steps=12)
    stats = cache.stats()
    last = _evaluations(pipe) - 1
    assert stats["transformer_evaluations"] + stats["transformer_evaluations_skipped"] == last + 1
    assert stats["transformer_evaluations_skipped"] > 0
    assert 0 not in cache.skipped_steps and last not in cache.skipped_steps
    assert torch.isfinite(out).all()


def test_teacache_rescale_is_the_polynomial():
    cache = TeaCache([2.0, -3.0, 0.5], 0.1)  # 2x^2 - 3x + 0.5
    assert cache.rescale(0.0) == 0.5 and cache.rescale(2.0) == pytest.approx(2.5)


def test_teacache_never_skips_where_its_polynomial_turns_down(pipe, embeds):
    # -100x^2 + x rises until x = 0.005 and is negative past 0.01: a few-step schedule's large
    # changes would accumulate below zero and skip every step if the fit were trusted there
    cache = TeaCache([-100.0, 1.0, 0.0], 1.0)
    assert cache.trusted_change == pytest.approx(0.005)
    assert torch.equal(_sample(pipe, embeds, cache), _sample(pipe, embeds))
    assert cache.stats()["transformer_evaluations_skipped"] == 0


@pytest.mark.parametrize(
    "coefficients, end",
    [([1.0, 0.0], math.inf), ([1.0, 0.0, 0.0, 0.0], math.inf), ([-1.0, 2.0, 0.0], 1.0), ([2.0, -3.0, 0.5], 0.0), ([0.5], math.inf)],
)
def test_polynomial_rise_end(coefficients, end):
    assert polynomial_rise_end(coefficients) == pytest.approx(end)


def test_the_shipped_coefficients_are_trusted_over_the_changes_of_150_steps():
    from osp_core.hub import BUILTIN_ROOT
    from osp_core.pipelines.repository import RELEASED_TEACACHE_COEFFICIENTS

    assert polynomial_rise_end(RELEASED_TEACACHE_COEFFICIENTS) == math.inf
    shapes = json.loads((BUILTIN_ROOT / "shapes" / "sampling.json").read_text())["teacache_coefficients"]
    # 150 PNDM steps on builtin:shapes change block 0's input by at most 0.097 a step (4 captions,
    # TeaCacheCalibration): the fitted polynomial must still rise there, so those runs skip as before
    assert 0.097 < polynomial_rise_end(shapes) < math.inf


def test_calibration_records_steps_and_the_fit_recovers_a_known_polynomial(pipe, embeds):
    calibration = TeaCacheCalibration()
    _sample(pipe, embeds, calibration, steps=12)
    assert len(calibration.pairs) == _evaluations(pipe) - 1 and all(x > 0 and y > 0 for x, y in calibration.pairs)
    xs = torch.linspace(0.01, 0.5, 40).tolist()
    truth = [3.0, -1.0, 0.25, 0.01]
    pairs = [(x, sum(c * x ** (3 - i) for i, c in enumerate(truth))) for x in xs]
    assert fit_teacache_coefficients(pairs, degree=3) == pytest.approx(truth, rel=1e-6, abs=1e-9)
    with pytest.raises(InputError, match="cannot fit a degree-4 polynomial"):
        fit_teacache_coefficients(pairs[:3], degree=4)


@pytest.mark.parametrize(
    "method, threshold, needles",
    [
        ("foo", None, ("unknown cache 'foo'", "none, pab, teacache, fbcache, magcache, easycache, fastercache")),
        ("fastercache", 0.1, ("--cache-threshold applies to --cache teacache, fbcache, magcache, easycache, not to --cache fastercache",)),
        ("pab", 0.1, ("--cache-threshold applies to --cache teacache",)),
        ("teacache", -0.1, ("--cache-threshold must be in [0, 1]",)),
        ("teacache", 1.5, ("--cache-threshold must be in [0, 1]",)),
        ("teacache", float("nan"), ("--cache-threshold must be in [0, 1]",)),
    ],
)
def test_bad_cache_options(method, threshold, needles):
    with pytest.raises(InputError) as caught:
        check_cache_options(method, threshold)
    for needle in needles:
        assert needle in str(caught.value)


def test_teacache_needs_the_models_coefficients():
    with pytest.raises(InputError, match="no TeaCache coefficients"):
        make_cache("teacache", None, None)
    cache = make_cache("teacache", 0.3, {"teacache_coefficients": [1.0, 0.0], "teacache_threshold": 0.1})
    assert isinstance(cache, TeaCache) and cache.threshold == 0.3
    assert make_cache("none") is None and isinstance(make_cache("PAB"), PyramidAttentionBroadcast)


def test_on_builtin_shapes_cached_videos_show_what_uncached_ones_show(tmp_path):
    """The shipped model at its sampler defaults (150 PNDM steps, guidance 7.5, the device's
    default dtype): with TeaCache at
    its shipped threshold and with PAB, each video is close to the uncached one and shows the
    same color, shape and direction (`osp eval shapes`), as benchmarks/caching.py measured on
    all 60 captions; TeaCache runs under half the transformer evaluations."""
    from osp_core.eval.shapes import measure
    from osp_core.io import read_video
    from osp_core.metrics import psnr
    from osp_core.jobs.sampling import run_sampling
    from osp_core.jobs.sampling_plan import SamplingJob

    # two of the four captions measured below (each 150 steps x 3 settings: the suite's time)
    prompts = ["a red circle moving right", "a green triangle moving up"]
    runs = {}
    for cache in ("none", "teacache", "pab"):
        job = SamplingJob(prompts=prompts, model="builtin:shapes", seed=0, cache=cache, output_dir=tmp_path / cache)
        runs[cache] = run_sampling(job).videos
    for cache in ("teacache", "pab"):
        agree, psnrs = 0, []
        for cached, uncached in zip(runs[cache], runs["none"]):
            a, b = read_video(cached["video"]).frames, read_video(uncached["video"]).frames
            psnrs.append(psnr(b, a))
            ma, mb = measure(a), measure(b)
            agree += (ma.color, ma.shape, ma.direction) == (mb.color, mb.shape, mb.direction)
        # every video shows what its uncached one shows (measured on these, seeds 0 and 1, and "a blue square
        # moving left", "a white square moving down": 4 of 4 for both caches, bf16;
        # TeaCache 34.5 / 39.3 / 38.5 / 23.9 dB, PAB 38.7 / 41.7 / 42.1 / 30.2 dB)
        assert agree == len(prompts), (cache, agree)
        assert sum(psnrs) / len(psnrs) >= 30.0, (cache, psnrs)
    evaluations = [v["settings"]["cache"]["transformer_evaluations"] for v in runs["teacache"]]
    assert max(evaluations) < 159 / 2, evaluations


# -- the caches of issue 25: FirstBlockCache, MagCache, EasyCache, FasterCache, a guidance interval


@pytest.fixture(scope="module")
def magcache_ratios(pipe, embeds):
    calibration = MagCacheCalibration()
    _sample(pipe, embeds, calibration)
    return fit_magcache_ratios(calibration.runs)


def _threshold_cache(method, threshold, ratios):
    return make_cache(method, threshold, {"teacache_coefficients": [1.0, 0.0], "magcache_ratios": ratios})


class _Batches:
    """Counts the transformer's calls by batch size (what ran: both halves or one)."""

    def __init__(self, transformer):
        self.sizes = []
        self.handle = transformer.register_forward_pre_hook(lambda module, args: self.sizes.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("method", ["teacache", "fbcache", "magcache", "easycache"])
def test_threshold_zero_is_bit_identical_to_off(pipe, embeds, magcache_ratios, method):
    cache = _threshold_cache(method, 0.0, magcache_ratios)
    assert torch.equal(_sample(pipe, embeds, cache), _sample(pipe, embeds))
    assert cache.describe()["transformer_evaluations_skipped"] == 0 and cache.describe()["threshold"] == 0.0


@pytest.mark.parametrize("method", ["fbcache", "magcache", "easycache"])
def test_threshold_caches_skip_steps_but_never_the_first_or_last(pipe, embeds, magcache_ratios, method):
    cache = _threshold_cache(method, 1.0, magcache_ratios)
    out = _sample(pipe, embeds, cache)
    stats, last = cache.stats(), _evaluations(pipe) - 1
    assert stats["transformer_evaluations"] + stats["transformer_evaluations_skipped"] == last + 1
    assert stats["transformer_evaluations_skipped"] > 0, stats
    assert 0 not in cache.skipped_steps and last not in cache.skipped_steps
    assert torch.isfinite(out).all() and not torch.equal(out, _sample(pipe, embeds))


def test_first_block_cache_runs_the_first_pair_then_reuses_the_rest(pipe, embeds):
    """A skipped step's output is the first pair's output plus the residual the other pairs
    added at the last computed step: the first pair runs at every step."""
    cache = FirstBlockCache(1.0)
    calls = []
    first = pipe.transformer.transformer_blocks[0].register_forward_pre_hook(lambda m, a: calls.append("first"))
    second = pipe.transformer.transformer_blocks[1].register_forward_pre_hook(lambda m, a: calls.append("second"))
    try:
        _sample(pipe, embeds, cache)
    finally:
        first.remove(), second.remove()
    assert calls.count("first") == _evaluations(pipe) and calls.count("second") == cache.stats()["transformer_evaluations"]


def test_magcache_rule_follows_the_ratios():
    """Skipped while the accumulated |1 - product of ratios| stays under the threshold, at most
    `max_skip` in a row, never inside the retention steps; ratios resample by nearest step."""
    assert interpolate_ratios([1.0, 2.0, 3.0], 5) == [1.0, 1.0, 2.0, 3.0, 3.0]  # halves round to even, as torch.round in diffusers
    assert interpolate_ratios([1.0, 2.0, 3.0, 4.0], 3) == [1.0, 3.0, 4.0] and interpolate_ratios([1.0, 2.0], 1) == [2.0]
    cache = MagCache([1.0] * 5 + [0.4] + [1.0] * 4, 0.5, max_skip=2, retention=0.2)
    cache.on_run_begin(torch.zeros(10))
    inputs = type("Inputs", (), {"hidden_states": torch.ones(2, 3)})()
    model = type("Model", (), {"run_blocks": lambda self, inputs: inputs.hidden_states * 2})()
    for index in range(10):
        cache.on_step_begin(DenoisingStep(index, 10, torch.tensor(999 - index), torch.zeros(10), None), None)
        cache.forward(model, inputs)
    # steps 0-1 retained; ratios of 1 add no error: 2 and 3 skipped, 4 runs (max_skip 2); step 5's
    # ratio 0.4 adds 0.6 > 0.5: it runs; 6 and 7 skipped, 8 runs (max_skip); the last step always runs
    assert cache.skipped_steps == [2, 3, 6, 7]
    assert fit_magcache_ratios([[1.0, 0.5], [1.0, 0.7]]) == pytest.approx([1.0, 0.6])


def test_magcache_indexes_a_run_begun_at_a_cut_by_its_schedule_steps():
    """An edit runs the last steps of its schedule: its step i is step offset + i of the whole
    run, and the ratios fitted per whole-run step are read there, not resampled to the steps run."""
    inputs = type("Inputs", (), {"hidden_states": torch.ones(2, 3)})()
    model = type("Model", (), {"run_blocks": lambda self, inputs: inputs.hidden_states * 2})()

    def skipped(offset: int) -> list[int]:
        cache = MagCache([1.0] * 5 + [0.4] * 5, 0.5, max_skip=9, retention=0.2)
        cache.on_run_begin(torch.zeros(5))
        for index in range(5):
            cache.on_step_begin(DenoisingStep(index, 5, torch.tensor(499 - index), torch.zeros(5), None, offset), None)
            cache.forward(model, inputs)
        return cache.skipped_steps

    # steps 5-9 of 10: each ratio 0.4 adds 0.6 > 0.5, nothing is skipped
    assert skipped(5) == []
    # read as a whole 5-step run the ratios resample to [1, 1, 1, 0.4, 0.4]: steps 1 and 2 would be skipped
    assert skipped(0) == [1, 2]


@pytest.mark.parametrize("scheduler", ["DDIM", "PNDM"])
def test_a_run_from_a_cut_tells_its_callbacks_the_steps_before_it(pipe, embeds, scheduler):
    from osp_core.pipelines.denoising import DenoisingCallback
    from osp_core.pipelines.t2v import make_scheduler

    class Offsets(DenoisingCallback):
        seen: list[tuple[int, int]] = []

        def on_step_begin(self, step, latents):
            self.seen.append((step.schedule_index, step.schedule_steps))

    kept = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler)
    try:
        pipe.scheduler.set_timesteps(8)
        whole = len(pipe.scheduler.timesteps)  # PNDM runs more evaluations than steps
        pipe(prompt_embeds=embeds, num_frames=9, height=32, width=32, num_inference_steps=8, generator=torch.Generator().manual_seed(1), output_type="latent", callbacks=[Offsets()], first_step=3)
    finally:
        pipe.scheduler = kept
    # the run's last step is the whole schedule's last: it began `whole - run` steps in
    assert Offsets.seen[-1] == (whole - 1, whole) and Offsets.seen[0][0] == whole - len(Offsets.seen) > 0


def test_magcache_calibration_records_one_ratio_per_step(magcache_ratios, pipe):
    assert len(magcache_ratios) == _evaluations(pipe) and magcache_ratios[0] == 1.0
    assert all(math.isfinite(r) and r > 0 for r in magcache_ratios)


def test_fastercache_estimates_the_unconditional_half_between_full_steps(pipe, embeds):
    every = FasterCache(FasterCacheSettings(every=1))  # the unconditional half runs at every step
    with _Batches(pipe.transformer) as batches:
        assert torch.equal(_sample(pipe, embeds, every), _sample(pipe, embeds))
    assert set(batches.sizes) == {2} and every.stats()["unconditional_estimated"] == 0
    cache = FasterCache(FasterCacheSettings(every=3, timestep_range=(-1, 1000)))
    with _Batches(pipe.transformer) as batches:
        out = _sample(pipe, embeds, cache)
    evaluations = _evaluations(pipe)
    estimated = cache.stats()["unconditional_estimated"]
    # step 0 runs both halves, then every 3rd guided step; the others run the conditional half alone
    assert estimated == sum(1 for i in range(evaluations) if i % 3) and batches.sizes.count(1) == estimated
    assert cache.stats()["transformer_evaluations"] == evaluations and torch.isfinite(out).all()


def test_fastercache_weights_low_and_high_frequencies():
    cache = FasterCache(FasterCacheSettings(alpha_low=2.0, low_range=(0, 1000), alpha_high=1.0))
    cache.delta = torch.randn(1, 4, 3, 16, 16)
    assert torch.equal(cache.weighted_delta(-5.0), cache.delta)  # outside both ranges: the difference as it was
    weighted = cache.weighted_delta(500.0)
    low = torch.full_like(cache.delta, 1.5)  # a constant is all low frequency: doubled
    cache.delta = low
    assert torch.allclose(cache.weighted_delta(500.0), 2 * low, atol=1e-5)
    assert not torch.allclose(weighted, cache.delta)


def test_a_guidance_interval_over_the_whole_schedule_is_bit_identical(pipe, embeds):
    interval = GuidanceInterval(0.0, 1.0)
    assert torch.equal(_sample(pipe, embeds, interval), _sample(pipe, embeds))
    assert interval.describe()["steps_without_guidance"] == 0


def test_outside_the_guidance_interval_the_conditional_half_runs_alone(pipe, embeds):
    interval = GuidanceInterval(0.0, 0.5)
    with _Batches(pipe.transformer) as batches:
        out = _sample(pipe, embeds, interval)
    pipe.scheduler.set_timesteps(12)
    outside = sum(1 for t in pipe.scheduler.timesteps if t / 1000 > 0.5)
    assert 0 < outside < len(pipe.scheduler.timesteps)
    assert interval.describe()["steps_without_guidance"] == outside == batches.sizes.count(1)
    assert batches.sizes.count(2) == len(pipe.scheduler.timesteps) - outside
    assert torch.isfinite(out).all() and not torch.equal(out, _sample(pipe, embeds))


def test_a_block_stack_cache_recomputes_when_guidance_turns_on(pipe, embeds):
    """Batch 1 outside the interval, 2 inside: a residual kept at one size is not reused at the other."""
    cache, interval = EasyCache(1.0), GuidanceInterval(0.0, 0.5)
    cache.attach(pipe.transformer)
    try:
        pipe(prompt_embeds=embeds, num_frames=9, height=32, width=32, num_inference_steps=12, generator=torch.Generator().manual_seed(5), output_type="latent", callbacks=[cache, interval])
    finally:
        cache.detach()
    pipe.scheduler.set_timesteps(12)
    switch = next(i for i, t in enumerate(pipe.scheduler.timesteps) if t / 1000 <= 0.5)
    assert switch not in cache.skipped_steps and cache.stats()["transformer_evaluations_skipped"] > 0


@pytest.mark.parametrize("scheduler", ["DDIM", "EulerAncestralDiscrete", "DPMSolverMultistep", "HeunDiscrete"])
def test_caches_run_with_other_schedulers(pipe, embeds, scheduler):
    from osp_core.pipelines.t2v import make_scheduler

    default = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler)
    try:
        for cache in (EasyCache(1.0), FasterCache(FasterCacheSettings(timestep_range=(-1, 1000)))):
            out = _sample(pipe, embeds, cache, steps=8)
            skipped = cache.stats().get("transformer_evaluations_skipped", cache.stats().get("unconditional_estimated"))
            assert torch.isfinite(out).all() and skipped > 0, (scheduler, cache.method)
    finally:
        pipe.scheduler = default


@pytest.mark.parametrize(
    "text, needle",
    [
        ("0.8,0.2", "--guidance-interval is reversed: 0.8 > 0.2"),
        ("0.2,1.5", "--guidance-interval must lie in [0, 1]"),
        ("-0.1,0.5", "--guidance-interval must lie in [0, 1]"),
        ("0.5", "--guidance-interval must be two numbers LO,HI"),
        ("a,b", "--guidance-interval must be two numbers LO,HI"),
        ("0.1,0.2,0.3", "--guidance-interval must be two numbers LO,HI"),
        ("nan,0.5", "--guidance-interval must lie in [0, 1]"),
    ],
)
def test_bad_guidance_intervals(text, needle):
    with pytest.raises(InputError) as caught:
        parse_guidance_interval(text)
    assert needle in str(caught.value)
    assert parse_guidance_interval("0.2, 0.8") == (0.2, 0.8) and parse_guidance_interval(None) is None


@pytest.mark.parametrize(
    "method, sampling, scheduler, guidance, needle",
    [
        ("magcache", {}, "PNDM", 7.5, "no MagCache ratios"),
        ("magcache", {"magcache_ratios": [1.0, 0.9], "magcache_scheduler": "PNDM"}, "DDIM", 7.5, "--cache magcache cannot take --scheduler DDIM"),
        ("fastercache", {}, "PNDM", 1.0, "--cache fastercache reuses the unconditional half"),
        ("teacache", {}, "PNDM", 7.5, "no TeaCache coefficients"),
    ],
)
def test_caches_a_model_or_setting_cannot_take(method, sampling, scheduler, guidance, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        check_cache_for_model(method, sampling, scheduler, guidance)
    check_cache_for_model("magcache", {"magcache_ratios": [1.0, 0.9], "magcache_scheduler": "PNDM"}, "PNDM", 7.5)
