"""T2VPipeline: parity with the v1.1.0 sampler on the tiny repository, prompts, schedulers, inputs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from osp_core.errors import InputError, ModelLoadError
from osp_core.pipelines.t2v import T2VPipeline, make_scheduler
from osp_core.pipelines.t2v_inputs import SCHEDULER_NAMES, check_steps, check_video_size, pick_version, scheduler_name

TINY_CALL = dict(num_frames=9, height=32, width=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture(scope="module")
def pipe(tiny_repo) -> T2VPipeline:
    pipeline = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def fixture_cases(reference_dir):
    meta = json.loads((reference_dir / "pipeline" / "pipeline_tiny.json").read_text())
    return meta["cases"], load_file(str(reference_dir / "pipeline" / "pipeline_tiny.safetensors"))


def test_components_and_provenance(pipe, tiny_repo):
    fresh = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32")  # later tests swap `pipe`'s scheduler
    assert type(fresh.scheduler).__name__ == "PNDMScheduler"
    assert type(pipe.transformer).__name__ == "LatteT2V" and type(pipe.vae).__name__ == "CausalVideoVAE"
    assert pipe.version == "9x32x32"
    assert pipe.text_encoder_source == f"{tiny_repo}/text_encoder"


@pytest.mark.parametrize("case_index", [0, 1])
def test_parity_with_reference_sampler(pipe, fixture_cases, case_index):
    cases, tensors = fixture_cases
    case = cases[case_index]
    pipe.scheduler = make_scheduler("PNDM")  # a fresh default PNDM, as the reference
    latents = pipe(
        case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_frames=case["num_frames"],
        height=case["height"],
        width=case["width"],
        num_inference_steps=case["num_inference_steps"],
        guidance_scale=case["guidance_scale"],
        latents=tensors[f"case{case_index}.initial_latents"],
        output_type="latent",
    ).frames
    expected = tensors[f"case{case_index}.final_latents"]
    assert latents.shape == expected.shape
    assert (latents - expected).abs().max() <= 1e-4 * expected.abs().max()
    video = pipe.decode_latents(latents)
    expected_video = tensors[f"case{case_index}.video_uint8"]
    assert video.dtype == torch.uint8 and video.shape == expected_video.shape == (1, 9, 32, 32, 3)
    assert (video.int() - expected_video.int()).abs().max() <= 2


def test_pt_output_is_uint8_video(pipe):
    pipe.scheduler = make_scheduler("DDIM")
    out = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), **TINY_CALL)
    assert out.frames.dtype == torch.uint8 and out.frames.shape == (1, 9, 32, 32, 3)


def test_prompt_is_lowercased_and_stripped_and_cut(pipe):
    loud = pipe.encode_prompt("  A RED Ball  ", negative_prompt="Blurry")
    quiet = pipe.encode_prompt("a red ball", negative_prompt="blurry")
    assert torch.equal(loud.prompt, quiet.prompt) and torch.equal(loud.negative, quiet.negative)
    # byte-level tokenizer: one token per byte plus EOS; negative cut to the same length
    assert loud.prompt.shape[1] == len("a red ball") + 1
    assert loud.negative.shape == loud.prompt.shape
    assert loud.prompt_mask.all()
    no_guidance = pipe.encode_prompt("a red ball", do_classifier_free_guidance=False)
    assert no_guidance.negative is None


def test_long_prompt_warns_with_the_cut_part(pipe, caplog):
    prompt = "a" * 290 + " tail of the prompt"
    with caplog.at_level(logging.WARNING, logger="osp_core.pipelines.t2v"):
        encoded = pipe.encode_prompt(prompt)
    # 300 tokens = 299 bytes + EOS: the cut part starts at byte 299
    assert encoded.truncated == [prompt[299:]]
    assert encoded.prompt.shape[1] == 300
    assert any(prompt[299:] in record.getMessage() for record in caplog.records)
    assert pipe.encode_prompt("short").truncated == [""]


def test_batched_prompts_equal_one_prompt_calls(pipe):
    """Prompts of different lengths in one call give what separate calls give (docs/sampling.md: up to
    float rounding)."""
    prompts = ["a dog", "a much longer prompt about a dog on a beach"]
    seeds = [11, 12]
    common = dict(negative_prompt="ugly", num_inference_steps=3, output_type="latent", **TINY_CALL)
    pipe.scheduler = make_scheduler("DDIM")
    together = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], **common).frames
    for index, (prompt, seed) in enumerate(zip(prompts, seeds)):
        alone = pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).frames
        # docs/sampling.md's figures: padding and masking change float rounding only (8e-6 of the
        # scale measured with AVX-512 kernels, 2.0e-5 with AVX2 ones)
        assert torch.allclose(together[index : index + 1], alone, rtol=0, atol=5e-5 * alone.abs().max().item())
        assert (pipe.decode_latents(together[index : index + 1])[0].int() - pipe.decode_latents(alone)[0].int()).abs().max() <= 1


def test_same_generator_seed_same_latents_and_videos_per_prompt(pipe):
    pipe.scheduler = make_scheduler("EulerAncestralDiscrete")  # stochastic steps: the generator matters throughout
    common = dict(num_inference_steps=2, output_type="latent", **TINY_CALL)
    first = pipe("waves", generator=torch.Generator().manual_seed(5), **common).frames
    again = pipe("waves", generator=torch.Generator().manual_seed(5), **common).frames
    other = pipe("waves", generator=torch.Generator().manual_seed(6), **common).frames
    assert torch.equal(first, again) and not torch.equal(first, other)
    two = pipe("waves", num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **common).frames
    assert two.shape[0] == 2
    # batched kernels round differently: compare at float32 precision of the largest value (~1e3 here)
    tolerance = 1e-5 * max(first.abs().max().item(), other.abs().max().item())
    assert torch.allclose(two[0], first[0], rtol=0, atol=tolerance) and torch.allclose(two[1], other[0], rtol=0, atol=tolerance)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_runs(pipe, name):
    pipe.scheduler = make_scheduler(name)
    assert type(pipe.scheduler).__name__ == name + "Scheduler"
    latents = pipe("a tree", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="latent", **TINY_CALL).frames
    assert latents.shape == (1, 4, 3, 4, 4) and torch.isfinite(latents).all()


def test_pndm_needs_four_steps(pipe):
    pipe.scheduler = make_scheduler("PNDM")
    with pytest.raises(InputError, match="PNDM needs at least 4 steps"):
        pipe("a cat", num_inference_steps=3, **TINY_CALL)
    with pytest.raises(InputError, match="at least 4 steps"):
        check_steps("PNDM", 3)
    check_steps("DDIM", 1)


@pytest.mark.parametrize("name", ["PNDM", "DDIM", "DPMSolverMultistep"])
def test_a_late_first_step_runs_the_rest_of_the_schedule(pipe, name):
    from osp_core.pipelines.denoising import DenoisingCallback

    class Count(DenoisingCallback):
        def on_run_begin(self, timesteps):
            self.timesteps = timesteps.tolist()

    pipe.scheduler = make_scheduler(name)
    counted = Count()
    latents = pipe("a tree", num_inference_steps=10, first_step=4, callbacks=[counted], generator=torch.Generator().manual_seed(0), output_type="latent", **TINY_CALL).frames
    fresh = make_scheduler(name)
    fresh.set_timesteps(10)
    lowest_six = sorted(set(fresh.timesteps.tolist()))[:6]
    assert torch.isfinite(latents).all() and max(counted.timesteps) == lowest_six[-1]
    # PNDM: 3 Runge-Kutta steps of 4 evaluations and 3 PLMS steps; the others: one each
    assert len(counted.timesteps) == (12 + 3 if name == "PNDM" else 6)
    assert pipe.num_timesteps == len(counted.timesteps)  # what the sidecar reports as transformer evaluations
    if name == "PNDM":  # 2 steps left: its Runge-Kutta start needs 4
        with pytest.raises(InputError, match="steps 4.. of 6"):
            pipe("a tree", num_inference_steps=6, first_step=4, **TINY_CALL)


def test_scheduler_names():
    assert scheduler_name("pndm") == "PNDM"
    assert scheduler_name("DPMSolverMultistepScheduler") == "DPMSolverMultistep"
    with pytest.raises(InputError, match="unknown scheduler 'Foo'"):
        scheduler_name("Foo")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_frames=10, height=32, width=32), r"4k\+1"),
        (dict(num_frames=9, height=36, width=32), "height 36"),
        (dict(num_frames=9, height=32, width=20), "width 20"),
        (dict(num_frames=9, height=32, width=32, num_inference_steps=0), "num_inference_steps"),
        # refused before set_timesteps builds its per-step arrays (100M steps once took 23 GB)
        (dict(num_frames=9, height=32, width=32, num_inference_steps=100_000_000), "num_inference_steps must be <= 1000"),
        (dict(num_frames=9, height=32, width=32, output_type="pil"), "output_type"),
    ],
)
def test_bad_call_arguments(pipe, kwargs, message):
    with pytest.raises(InputError, match=message):
        pipe("a cat", **kwargs)


def test_bad_latents_shape(pipe):
    pipe.scheduler = make_scheduler("DDIM")
    with pytest.raises(InputError, match="latents have shape"):
        pipe("a cat", num_inference_steps=1, latents=torch.zeros(1, 4, 2, 4, 4), **TINY_CALL)


def test_unknown_version(tiny_repo):
    with pytest.raises(ModelLoadError, match="available: 9x32x32"):
        T2VPipeline.from_pretrained(tiny_repo, version="17x32x32")


def test_version_picking_and_size_checks():
    released = ["65x512x512", "221x512x512"]
    assert pick_version(65, released) == "65x512x512"
    assert pick_version(17, released) == "65x512x512"
    assert pick_version(69, released) == "221x512x512"
    assert pick_version(301, released) == "221x512x512"
    check_video_size(221, 512, 512)
    with pytest.raises(InputError, match="use 65 or 69 frames"):
        check_video_size(66, 512, 512)


def test_model_offload_and_freed_text_encoder_give_the_same_video(tiny_repo):
    """The CLI flows: hooks that move each model to the device while it runs (--offload), and
    prompts encoded first with T5 dropped before denoising (the default)."""
    call = dict(num_inference_steps=2, **TINY_CALL)
    plain = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32", scheduler="DDIM")
    plain.set_progress_bar_config(disable=True)
    expected = plain("a kite", generator=torch.Generator().manual_seed(1), **call).frames

    embeds = plain.encode_prompt("a kite")
    plain.free_text_encoder()
    assert plain.text_encoder is None
    assert torch.equal(plain(prompt_embeds=embeds, generator=torch.Generator().manual_seed(1), **call).frames, expected)
    with pytest.raises(InputError, match="no text encoder"):
        plain("a kite", **call)

    offloaded = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32", scheduler="DDIM")
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")  # the same accelerate hooks as on a GPU
    assert torch.equal(offloaded("a kite", generator=torch.Generator().manual_seed(1), **call).frames, expected)


def test_t5_is_located_before_the_big_models(tiny_repo, tmp_path, monkeypatch):
    """A repository without text_encoder/ (the released one) takes T5 from the Hub: out of
    reach, that is one HubUnavailableError naming --text-encoder, before any weights load."""
    import huggingface_hub.constants

    from osp_core.errors import HubUnavailableError
    from osp_core.models.latte_t2v import LatteT2V

    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("vae", "9x32x32"):
        (repo / name).symlink_to(tiny_repo / name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def must_not_load(*args, **kwargs):
        raise AssertionError("the transformer was loaded before T5 was found")

    monkeypatch.setattr(LatteT2V, "from_pretrained", must_not_load)
    with pytest.raises(HubUnavailableError, match="DeepFloyd/t5-v1_1-xxl") as caught:
        T2VPipeline.from_pretrained(repo, version="9x32x32")
    assert "--text-encoder DIR" in caught.value.hint and "HF_HUB_OFFLINE" in caught.value.hint


def test_text_encoder_must_be_a_t5(tiny_repo, tmp_path):
    from osp_core.pipelines.t2v import load_t5
    from osp_core.pipelines.t2v_inputs import locate_t5

    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ModelLoadError, match=r"is not a T5 encoder \(no model_type, a CausalVAEModel\)"):
        locate_t5(str(tiny_repo / "vae"))
    with pytest.raises(ModelLoadError, match=r"is not a T5 encoder \(model_type llava\)"):
        locate_t5(str(vlm))
    with pytest.raises(ModelLoadError, match="does not exist"):
        locate_t5(str(tmp_path / "nowhere"))
    # a T5 config without tokenizer files: transformers builds an empty tokenizer; refused
    with pytest.raises(ModelLoadError, match="has no vocabulary"):
        load_t5(str(tiny_repo / "text_encoder"), None, None)
    # a repository folder as --text-encoder: its text_encoder/ and tokenizer/
    location = locate_t5(str(tiny_repo))
    assert (location.encoder_subfolder, location.tokenizer_subfolder) == ("text_encoder", "tokenizer")
    tokenizer, encoder = load_t5(str(tiny_repo), None, None)
    assert type(tokenizer).__name__ == "ByT5Tokenizer" and not encoder.training


def test_clean_caption_names_its_packages(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bs4", None)  # None in sys.modules: `import bs4` raises ImportError
    with pytest.raises(InputError, match=r"beautifulsoup4.*pip install 'osp\[clean-caption\]'"):
        T2VPipeline.preprocess("A cat", clean_caption=True)
