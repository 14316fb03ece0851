"""`--speed` profiles: what a profile fills and what explicit options keep, `default` being
today's run bit for bit, the bad inputs (sampling.json entries, names), the released weights'
fallback profiles and the shipped model's, and `osp edit` with a cache and a profile."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from osp_core.errors import InputError, ModelLoadError
from osp_core.jobs.sampling_plan import SamplingJob, plan_sampling
from osp_core.pipelines.t2v_inputs import SAMPLING_FILE, check_speed_profiles, read_sampling_file, resolve_speed
from tests.clips import inputs  # noqa: F401 - a fixture
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = {"frames": 9, "height": 32, "width": 32}
COEFFICIENTS = [1.0, 0.0]  # TeaCache's polynomial: the change itself
PROFILES = {
    "fast": {"scheduler": "EulerDiscrete", "steps": 3, "cache": "teacache", "cache_threshold": 0.3, "guidance_interval": [0.2, 0.9]},
    "fastest": {"steps": 2},
}


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture(scope="module")
def profiled(tiny_repo, tmp_path_factory):
    """The tiny model with sampling defaults (DDIM, 4 steps), MagCache ratios fitted with DDIM
    and two profiles."""
    repo = tmp_path_factory.mktemp("profiled") / "repo"
    shutil.copytree(tiny_repo, repo)
    sampling = {"steps": 4, "scheduler": "DDIM", "teacache_coefficients": COEFFICIENTS, "magcache_ratios": [1.0, 0.9, 0.8], "magcache_scheduler": "DDIM", "speed_profiles": PROFILES}
    (repo / SAMPLING_FILE).write_text(json.dumps(sampling))
    return repo


def _settings(repo: Path, **options) -> tuple:
    plan = plan_sampling(SamplingJob(prompts=["a cat"], model=str(repo), dtype="fp32", **SIZE, **options), check_outputs=False)
    return plan.speed, plan.scheduler, plan.steps, plan.cache, plan.cache_threshold, plan.guidance_interval


def test_a_profile_fills_what_is_not_given_and_explicit_options_win(profiled):
    plain = ("default", "DDIM", 4, "none", None, None)
    assert _settings(profiled) == plain
    assert _settings(profiled, speed="default") == plain
    assert _settings(profiled, speed="FAST") == ("fast", "EulerDiscrete", 3, "teacache", 0.3, (0.2, 0.9))
    assert _settings(profiled, speed="fastest") == ("fastest", "DDIM", 2, "none", None, None)  # the rest: the model's
    # each explicit option wins over its field, the others still come from the profile
    assert _settings(profiled, speed="fast", steps=5) == ("fast", "EulerDiscrete", 5, "teacache", 0.3, (0.2, 0.9))
    assert _settings(profiled, speed="fast", scheduler="ddim")[1:3] == ("DDIM", 3)
    assert _settings(profiled, speed="fast", cache_threshold=0.05)[3:5] == ("teacache", 0.05)
    assert _settings(profiled, speed="fast", guidance_interval="0.1,0.5")[5] == (0.1, 0.5)
    # the profile's threshold goes with its cache: another cache takes its own default
    assert _settings(profiled, speed="fast", cache="fbcache")[3:5] == ("fbcache", None)
    assert _settings(profiled, speed="fast", cache="none")[3:5] == ("none", None)
    # no guidance to limit: the profile's interval is left out, an explicit one is refused as before
    assert _settings(profiled, speed="fast", guidance=1.0)[5] is None
    with pytest.raises(InputError, match="--guidance 1 turns it off"):
        _settings(profiled, speed="fast", guidance=1.0, guidance_interval="0.2,0.8")
    # an explicit cache the profile's scheduler cannot take: refused as with --scheduler, naming the profile's choice
    with pytest.raises(InputError, match=r"fitted with DDIM \(--speed fast chooses scheduler EulerDiscrete\)"):
        _settings(profiled, speed="fast", cache="magcache")
    assert _settings(profiled, speed="fast", cache="magcache", scheduler="DDIM")[1:4] == ("DDIM", 3, "magcache")
    with pytest.raises(InputError, match=r"PNDM needs at least 4 steps, got 2 \(pass --steps 4"):
        _settings(profiled, speed="fast", scheduler="PNDM", steps=2)  # nothing the profile chose


def test_unknown_and_undefined_profiles_are_refused(profiled, tiny_repo, osp_in_process, tmp_path):
    with pytest.raises(InputError, match="unknown speed profile 'turbo'"):
        _settings(profiled, speed="turbo")
    with pytest.raises(InputError, match=r"has no 'fast' speed profile \(speed_profiles in its sampling.json\) \(use --speed default\)"):
        _settings(tiny_repo, speed="fast")
    proc = osp_in_process("t2v", "sample", "a cat", "--model", str(tiny_repo), "--speed", "fastest", "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "has no 'fastest' speed profile", code=2)
    assert not (tmp_path / "out").exists()


def _error(profiles: object, tmp_path: Path, **sampling) -> str:
    (tmp_path / SAMPLING_FILE).write_text(json.dumps({**sampling, "speed_profiles": profiles}))
    with pytest.raises(ModelLoadError) as raised:
        read_sampling_file(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / SAMPLING_FILE) in message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "profiles, needle",
    [
        ([1], "'speed_profiles' in"),
        ({"turbo": {"steps": 10}}, "unknown speed profile 'turbo'"),
        ({"default": {"steps": 10}}, "unknown speed profile 'default'"),  # default is the model's own settings
        ({"fast": 10}, "'speed_profiles.fast' in"),
        ({"fast": {"sampler": "DDIM"}}, "unknown key 'speed_profiles.fast.sampler'"),
        ({"fast": {"scheduler": "Bogus"}}, "'speed_profiles.fast.scheduler' in .* unknown scheduler 'Bogus'"),
        ({"fast": {"cache": "bogus"}}, "'speed_profiles.fast.cache' in .* unknown cache 'bogus'"),
        ({"fast": {"steps": 0}}, "'speed_profiles.fast.steps' in .* steps must be >= 1"),
        ({"fast": {"steps": 5000}}, "'speed_profiles.fast.steps' in .* must be <= 1000"),
        ({"fast": {"steps": 2.5}}, "'speed_profiles.fast.steps' in .* must be an integer"),
        ({"fast": {"scheduler": "PNDM", "steps": 2}}, "speed profile 'fast' in .* PNDM needs at least 4 steps"),
        ({"fast": {"cache": "easycache", "cache_threshold": 1.5}}, "'speed_profiles.fast.cache_threshold' .* must be in \\[0, 1\\]"),
        ({"fast": {"cache": "pab", "cache_threshold": 0.1}}, "'speed_profiles.fast.cache_threshold' .* not to --cache pab"),
        ({"fast": {"cache_threshold": 0.1}}, "not to --cache none"),
        ({"fast": {"guidance_interval": [0.9, 0.1]}}, "'speed_profiles.fast.guidance_interval' .* reversed"),
        ({"fast": {"guidance_interval": [0.5]}}, "must be a list of two numbers"),
        ({"fast": {"guidance_interval": [0.1, 1.5]}}, "must lie in \\[0, 1\\]"),
        ({"fastest": {"cache": "teacache"}}, "speed profile 'fastest' .* no TeaCache coefficients"),
    ],
)
def test_bad_profiles_in_sampling_json_are_one_line_errors(profiles, needle, tmp_path):
    import re

    assert re.search(needle, _error(profiles, tmp_path))


def test_a_profiles_magcache_must_match_its_scheduler(tmp_path):
    ratios = {"magcache_ratios": [1.0, 0.9, 0.8], "magcache_scheduler": "PNDM"}
    assert "fitted with PNDM" in _error({"fast": {"scheduler": "DDIM", "cache": "magcache"}}, tmp_path, **ratios)
    (tmp_path / SAMPLING_FILE).write_text(json.dumps({**ratios, "speed_profiles": {"fast": {"cache": "magcache"}}}))
    assert read_sampling_file(tmp_path)["speed_profiles"] == {"fast": {"cache": "magcache"}}  # the model's PNDM


def test_the_released_and_shipped_profiles_are_valid_and_resolve_to_their_entries():
    from osp_core.hub import DEFAULT_REPO, resolve_model_dir
    from osp_core.pipelines.repository import RELEASED_SPEED_PROFILES, ModelRepository
    from osp_core.pipelines.t2v_inputs import check_cache_for_model

    released = ModelRepository.resolve(DEFAULT_REPO).sampling  # known without the Hub
    assert check_speed_profiles(RELEASED_SPEED_PROFILES, "released") == RELEASED_SPEED_PROFILES == released["speed_profiles"]
    shapes = read_sampling_file(resolve_model_dir("builtin:shapes"))
    for sampling in (released, {**released, **shapes}):
        for name, profile in sampling["speed_profiles"].items():
            check_cache_for_model(profile.get("cache", "none"), sampling, profile.get("scheduler", sampling["scheduler"]))
            chosen = resolve_speed(name, sampling)
            assert {field: getattr(chosen, field) for field in profile} == {k: (tuple(v) if isinstance(v, list) else v) for k, v in profile.items()}
            assert chosen.speed == name and set(chosen.from_profile) == set(profile)


def test_default_is_todays_run_bit_for_bit_and_the_sidecar_records_the_profile(profiled, tmp_path):
    from osp_core.jobs.records import load_latents
    from osp_core.jobs.sampling import run_sampling

    def run(folder: str, **options) -> tuple[dict, torch.Tensor]:
        job = SamplingJob(prompts=["a cat"], model=str(profiled), seed=4, dtype="fp32", save_latents=True, output_dir=tmp_path / folder, **SIZE, **options)
        record = run_sampling(job).videos[0]
        return json.loads(Path(record["sidecar"]).read_text()), load_latents(record["latents"]).latents

    (plain, plain_latents), (default, default_latents) = run("plain"), run("default", speed="default")
    assert torch.equal(plain_latents, default_latents)
    assert {k: v for k, v in plain.items() if k != "seconds"} | {"video": "", "latents": ""} == {k: v for k, v in default.items() if k != "seconds"} | {"video": "", "latents": ""}
    assert plain["settings"]["speed"] == "default" and plain["settings"]["steps"] == 4 and plain["settings"]["scheduler"] == "DDIMScheduler"
    fast, fast_latents = run("fast", speed="fast", cache_threshold=0.0)  # threshold 0: TeaCache skips nothing
    settings = fast["settings"]
    assert (settings["speed"], settings["scheduler"], settings["steps"]) == ("fast", "EulerDiscreteScheduler", 3)
    assert settings["cache"]["method"] == "teacache" and settings["cache"]["threshold"] == 0.0 and settings["cache"]["transformer_evaluations_skipped"] == 0
    assert settings["guidance_interval"]["interval"] == [0.2, 0.9]
    assert not torch.equal(fast_latents, plain_latents)


# -- osp edit ----------------------------------------------------------------------------------


def _edit(inputs, repo: Path, out: Path, **options):
    from osp_core.jobs.edit import EditJob, run_edit

    return run_edit(EditJob(video=inputs / "in.mp4", output=out, box="0,0,16,16", model=str(repo), seed=2, dtype="fp32", strength=0.5, **options))


def test_an_edit_takes_a_cache_and_threshold_0_is_bit_identical_to_none(inputs, profiled, tmp_path):
    """The edit runs the last half of its steps (strength 0.5) through the same caches."""
    plain = _edit(inputs, profiled, tmp_path / "plain.mp4", steps=6)
    assert plain.record["settings"]["cache"]["method"] == "none" and plain.record["settings"]["speed"] == "default"
    for cache in ("teacache", "easycache"):
        cached = _edit(inputs, profiled, tmp_path / f"{cache}.mp4", steps=6, cache=cache, cache_threshold=0.0)
        assert torch.equal(cached.frames, plain.frames), cache
        recorded = cached.record["settings"]["cache"]
        assert recorded["method"] == cache and recorded["threshold"] == 0.0 and recorded["transformer_evaluations"] == plain.record["steps_run"]
    skipping = _edit(inputs, profiled, tmp_path / "skip.mp4", steps=12, cache="easycache", cache_threshold=1.0)  # past its warm-up
    assert skipping.record["settings"]["cache"]["transformer_evaluations_skipped"] > 0
    fast = _edit(inputs, profiled, tmp_path / "fast.mp4", speed="fast")
    settings = fast.record["settings"]
    assert (settings["speed"], settings["scheduler"], settings["steps"], settings["cache"]["method"], settings["guidance_interval"]["interval"]) == ("fast", "EulerDiscreteScheduler", 3, "teacache", [0.2, 0.9])


def test_the_control_engine_refuses_a_block_stack_cache_and_drops_a_profiles(inputs, tmp_path):
    """The control module runs the transformer's blocks itself: a cache that skips them cannot
    run there (refused when asked for, left out with a warning when a profile brings it)."""
    from osp_core.hub import resolve_model_dir
    from osp_core.jobs.edit import EditJob, plan_edit

    shapes = resolve_model_dir("builtin:shapes")
    repo = tmp_path / "shapes"
    shutil.copytree(shapes, repo, ignore=shutil.ignore_patterns("lora"))
    sampling = read_sampling_file(shapes)
    (repo / SAMPLING_FILE).write_text(json.dumps({**sampling, "speed_profiles": {"fast": {"steps": 20, "cache": "teacache"}}}))
    video = tmp_path / "clip.mp4"
    from osp_core.data.shapes import iter_clips, render
    from osp_core.io import write_video

    write_video(video, render(next(iter_clips(1, 0))), fps=8)

    def plan(**options):
        return plan_edit(EditJob(video=video, output=tmp_path / "o.mp4", box="8,8,40,40", model=str(repo), **options))

    with pytest.raises(InputError, match="--cache teacache cannot run with the control engine"):
        plan(cache="teacache")
    dropped = plan(speed="fast")
    assert dropped.engine == "control" and dropped.sampling.cache == "none" and dropped.sampling.steps == 20
    assert any("cannot run with the control engine" in warning for warning in dropped.sampling.warnings)
    assert plan(speed="fast", engine="blend").sampling.cache == "teacache"
