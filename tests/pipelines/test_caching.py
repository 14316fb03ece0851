"""Sampling caches: off is bit-identical, PAB hooks the right attentions on its schedule,
TeaCache skips steps by its rule, calibration fits, and on builtin:shapes the cached videos
keep what the uncached ones show."""

from __future__ import annotations

import math

import pytest
import torch

from osp_core.errors import InputError
from osp_core.pipelines.caching import PABSettings, PyramidAttentionBroadcast, TeaCache, TeaCacheCalibration, fit_teacache_coefficients, make_cache
from osp_core.pipelines.t2v_inputs import check_cache_options

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
    if cache is not None:
        cache.attach(pipe.transformer)
    try:
        return pipe(
            prompt_embeds=embeds, num_frames=9, height=32, width=32, num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed), output_type="latent", callbacks=[cache] if cache else [],
        ).frames  # fmt: skip
    finally:
        if cache is not None:
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
        ("foo", None, ("unknown cache 'foo'", "none, pab, teacache")),
        ("pab", 0.1, ("--cache-threshold applies to --cache teacache",)),
        ("teacache", 0.0, ("--cache-threshold must be in (0, 1]",)),
        ("teacache", 1.5, ("--cache-threshold must be in (0, 1]",)),
        ("teacache", float("nan"), ("--cache-threshold must be in (0, 1]",)),
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
    cache = make_cache("teacache", 0.3, ([1.0, 0.0], 0.1))
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

    prompts = ["a red circle moving right", "a green triangle moving up", "a blue square moving left", "a white square moving down"]
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
        # every video shows what its uncached one shows (measured: 4 of 4 for both caches, bf16;
        # TeaCache 34.5 / 39.3 / 38.5 / 23.9 dB, PAB 38.7 / 41.7 / 42.1 / 30.2 dB)
        assert agree == len(prompts), (cache, agree)
        assert sum(psnrs) / len(psnrs) >= 30.0, (cache, psnrs)
    evaluations = [v["settings"]["cache"]["transformer_evaluations"] for v in runs["teacache"]]
    assert max(evaluations) < 159 / 2, evaluations
