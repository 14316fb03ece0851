"""`osp t2v sample` as a user runs it: videos, sidecars, determinism and every bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import assert_one_line_error, run_osp

SEED = 7
LONG_PROMPT = "a slow pan over a quiet harbour at dawn, " * 8 + "END OF THE LONG PROMPT"
# parity with the float32 reference: on CPUs with bf16 units the default would be bf16
SIZE_ARGS = ("--frames", "9", "--height", "32", "--width", "32", "--dtype", "fp32")
# tiny models: one thread is much faster than two on shared CI cores
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture(scope="module")
def sampled(tiny_repo, tmp_path_factory):
    """One run over a prompt file with two prompts (the second over 300 tokens)."""
    out = tmp_path_factory.mktemp("t2v")
    prompts = out / "prompts.txt"
    prompts.write_text("A Shiba Inu wearing a beret\n\n" + LONG_PROMPT + "\n", encoding="utf-8")
    proc = run_osp(
        "t2v", "sample", "--prompts", str(prompts), *SIZE_ARGS, "--steps", "4", "--seed", str(SEED),
        "--negative-prompt", "blurry", "--model", str(tiny_repo), "-o", str(out / "videos"),
        "--save-latents", "--fps", "12", "--json", env=ONE_THREAD,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_writes_a_readable_mp4_per_prompt(sampled):
    out, proc = sampled
    summary = json.loads(proc.stdout)
    assert len(summary["videos"]) == 2
    for video in summary["videos"]:
        with av.open(video["video"]) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            assert float(stream.average_rate) == 12
        assert len(frames) == 9 and frames[0].shape == (32, 32, 3)
    names = sorted(p.name for p in (out / "videos").iterdir())
    assert not any(name.startswith(".") for name in names), names  # no temporary files left
    assert f"a-shiba-inu-wearing-a-beret-{SEED}.mp4" in names


def test_sidecar_is_complete(sampled, tiny_repo):
    out, proc = sampled
    video = json.loads(proc.stdout)["videos"][0]
    sidecar = json.loads((out / "videos" / f"a-shiba-inu-wearing-a-beret-{SEED}.json").read_text())
    assert sidecar["prompt"] == "A Shiba Inu wearing a beret"
    assert sidecar["negative_prompt"] == "blurry"
    assert sidecar["seed"] == SEED
    assert sidecar["settings"] == {
        "frames": 9, "temporal_attention": True, "height": 32, "width": 32, "steps": 4, "guidance": 7.5, "scheduler": "PNDMScheduler",
        "fps": 12.0, "num_videos": 1, "device": "cpu", "dtype": "fp32", "offload": False, "tile": True,
        "clean_caption": False, "attention": "sdpa", "compile": False, "speed": "default",
        "cache": {"method": "none", "transformer_evaluations": 13},  # PNDM: 4 steps, Runge-Kutta warm-up included
    }  # fmt: skip
    assert sidecar["models"] == {"model": str(tiny_repo), "version": "9x32x32", "text_encoder": f"{tiny_repo}/text_encoder"}
    assert sidecar["num_frames"] == 9 and sidecar["size"] == [32, 32]
    # the sidecar names its files relative to itself; the --json summary gives absolute paths
    assert sidecar["video"] == f"a-shiba-inu-wearing-a-beret-{SEED}.mp4"
    assert sidecar["latents"] == f"a-shiba-inu-wearing-a-beret-{SEED}.latents.safetensors"
    for key in ("video", "latents", "sidecar"):
        assert Path(video[key]).is_absolute() and Path(video[key]).is_file()
    assert Path(video["video"]).name == sidecar["video"] and Path(video["latents"]).name == sidecar["latents"]
    with safe_open(str(out / "videos" / sidecar["latents"]), framework="pt") as handle:
        assert handle.get_tensor("latents").shape == (1, 4, 3, 4, 4)
    # the second prompt gets the next seed
    assert json.loads(proc.stdout)["videos"][1]["seed"] == SEED + 1


def test_long_prompt_warns_with_the_cut_part(sampled):
    _, proc = sampled
    warnings = [line for line in proc.stderr.splitlines() if "longer than 300 tokens" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: prompt 2")
    assert "end of the long prompt" in warnings[0]
    second = json.loads(proc.stdout)["videos"][1]
    assert second["truncated_prompt_part"].endswith("END OF THE LONG PROMPT".lower())


def test_same_seed_gives_the_same_file_which_is_kept_unless_overwrite(sampled, tiny_repo, tmp_path):
    """Same seed, same bytes; and an earlier video of that name is refused unless --overwrite."""
    out, _ = sampled
    name = f"a-shiba-inu-wearing-a-beret-{SEED}.mp4"
    copy = tmp_path / name
    copy.write_bytes((out / "videos" / name).read_bytes())
    (tmp_path / name.replace(".mp4", ".json")).write_text("{}")  # an earlier sidecar, to be replaced too
    args = (
        "t2v", "sample", "A Shiba Inu", "wearing a beret", *SIZE_ARGS, "--steps", "4", "--seed", str(SEED),
        "--negative-prompt", "blurry", "--model", str(tiny_repo), "-o", str(tmp_path), "--fps", "12",
    )  # fmt: skip
    assert_one_line_error(run_osp(*args), f"{name}' and 1 more outputs already exist", "--overwrite")
    earlier = copy.stat().st_mtime_ns
    time.sleep(0.01)
    proc = run_osp(*args, "--overwrite", "--save-latents", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert copy.stat().st_mtime_ns != earlier  # written again ...
    assert copy.read_bytes() == (out / "videos" / name).read_bytes()  # ... with the same content
    latents = [load_file(str(folder / name.replace(".mp4", ".latents.safetensors")))["latents"] for folder in (out / "videos", tmp_path)]
    assert torch.equal(*latents)  # the same latents, not only the same 8-bit frames
    assert json.loads((tmp_path / name.replace(".mp4", ".json")).read_text())["seed"] == SEED


@pytest.mark.parametrize(
    "args, needles",
    [
        (("a cat", "--frames", "10"), ("frame count 10", "4k+1")),
        (("a cat", "--height", "500"), ("height 500", "multiple of 16")),
        (("a cat", "--width", "100"), ("width 100", "multiple of 16")),
        (("a cat", "--scheduler", "Foo"), ("unknown scheduler 'Foo'", "PNDM")),
        (("a cat", "--scheduler", "PNDM", "--steps", "2"), ("at least 4 steps",)),
        (("a cat", "--version", "65x512"), ("version '65x512'",)),
        (("a cat", "--num-videos", "0"), ("--num-videos",)),
        (("a cat", "--dtype", "fp8"), ("unknown dtype",)),
        (("   ",), ("prompt is empty",)),
        ((), ("no prompt given",)),
        (("--prompts", "/nonexistent/prompts.txt"), ("does not exist",)),
        (("--prompts", "/"), ("'/' is a directory",)),
        # the default --model is a Hub id: an unreleased version is refused before any download
        (("a cat", "--version", "129x512x512"), ("'129x512x512' is not a released version", "65x512x512, 221x512x512")),
    ],
)
def test_bad_input_is_one_line(args, needles, tmp_path):
    proc = run_osp("t2v", "sample", *args, "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, *needles)


@pytest.mark.parametrize(
    "command",
    [("t2v", "sample", "a cat"), ("t2v", "calibrate-cache", "a cat"), ("edit", "{video}", "-o", "{out}/edited.mp4", "--box", "0,0,16,16")],
    ids=["sample", "calibrate-cache", "edit"],
)
def test_steps_are_bounded_before_anything_runs(osp_in_process, tiny_repo, tmp_path, command):
    """--steps 100000000 was accepted, printed nothing and was killed at about 23 GB (the
    scheduler's timestep arrays grow with the step count)."""
    from osp_core.io import write_video

    video = tmp_path / "in.mp4"
    write_video(video, torch.zeros(9, 32, 32, 3, dtype=torch.uint8), fps=8)
    args = [a.format(video=video, out=tmp_path / "out") for a in command]
    proc = osp_in_process(*args, "--model", str(tiny_repo), "--steps", "100000000", *(("-o", str(tmp_path / "out")) if command[1] == "sample" else ()))
    assert_one_line_error(proc, "--steps must be <= 1000", "--steps 1000 or fewer")
    assert not (tmp_path / "out").exists()


def test_sampling_json_steps_are_bounded(tiny_repo, tmp_path):
    from osp_core.errors import ModelLoadError
    from osp_core.pipelines.t2v_inputs import check_sampling_settings

    assert check_sampling_settings({"steps": 1000}, "sampling.json") == {"steps": 1000}
    with pytest.raises(ModelLoadError, match="'steps' in 'sampling.json' is out of range"):
        check_sampling_settings({"steps": 100_000_000}, "sampling.json")


def test_unknown_version_in_repo(tiny_repo, tmp_path):
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(tiny_repo), "--version", "17x32x32", "-o", str(tmp_path))
    assert_one_line_error(proc, "17x32x32", "available: 9x32x32")


def test_empty_prompt_file_and_stdin(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n", encoding="utf-8")
    assert_one_line_error(run_osp("t2v", "sample", "--prompts", str(empty), "-o", str(tmp_path)), "has no prompts")
    assert_one_line_error(run_osp("t2v", "sample", "--prompts", "-", "-o", str(tmp_path), input=""), "has no prompts")


def test_unwritable_output_dir(tiny_repo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(tiny_repo), "-o", str(blocker / "videos"))
    assert_one_line_error(proc, "cannot create output folder")


def test_missing_model_folder(tmp_path):
    proc = run_osp("t2v", "sample", "a cat", "--model", str(tmp_path / "nowhere"), "-o", str(tmp_path))
    assert_one_line_error(proc, "does not exist")


def test_transformer_folder_from_a_checkpoint(tiny_repo, tmp_path):
    """`--transformer` samples with a training checkpoint's model/ folder, the rest from --model."""
    import shutil

    checkpoint_model = tmp_path / "checkpoints" / "step-10" / "model"
    shutil.copytree(tiny_repo / "9x32x32", checkpoint_model)
    proc = run_osp(
        "t2v", "sample", "a red balloon", *SIZE_ARGS, "--steps", "4", "--seed", "1", "--model", str(tiny_repo),
        "--transformer", str(checkpoint_model), "-o", str(tmp_path / "out"), "--json", env=ONE_THREAD,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    sidecar = json.loads((tmp_path / "out" / "a-red-balloon-1.json").read_text())
    assert str(checkpoint_model) in json.dumps(sidecar) and video["video"].endswith(".mp4")
    proc = run_osp("t2v", "sample", "x", *SIZE_ARGS, "--model", str(tiny_repo), "--transformer", str(checkpoint_model), "--version", "9x32x32")
    assert_one_line_error(proc, "--transformer and --version")
    proc = run_osp("t2v", "sample", "x", *SIZE_ARGS, "--model", str(tiny_repo), "--transformer", str(tmp_path))
    assert_one_line_error(proc, "no config.json in transformer folder")


def test_saved_latents_decode_with_osp_vae_decode(sampled, tiny_repo, tmp_path):
    """--save-latents writes what `osp vae encode` writes: unscaled latents and its header, so
    `osp vae decode FILE` gives the sampled video back."""
    from osp_core.pipelines.t2v import T2VPipeline
    from osp_core.jobs.records import load_latents
    from osp_core.pipelines.video_vae import decode, load_vae

    out, proc = sampled
    record = json.loads(proc.stdout)["videos"][0]
    saved = load_latents(record["latents"])
    header = saved.metadata
    assert {k: json.loads(header[k]) for k in ("fps", "frames", "height", "width", "scaling_factor", "seed")} == {
        "fps": 12.0, "frames": 9, "height": 32, "width": 32, "scaling_factor": 0.18215, "seed": SEED,
    }  # fmt: skip
    assert header["model"] == str(tiny_repo) and header["prompt"] == "A Shiba Inu wearing a beret" and header["negative_prompt"] == "blurry"

    # the same sampling in this process: the file holds its final latents / scaling_factor
    pipe = T2VPipeline.from_pretrained(tiny_repo, version="9x32x32")
    pipe.set_progress_bar_config(disable=True)
    final = pipe(
        "A Shiba Inu wearing a beret", negative_prompt="blurry", num_frames=9, height=32, width=32,
        num_inference_steps=4, generator=torch.Generator().manual_seed(SEED), output_type="latent",
    ).frames  # fmt: skip
    assert torch.allclose(saved.latents * 0.18215, final, rtol=1e-4, atol=1e-4 * final.abs().max().item())
    # decoding as `osp vae decode` does gives the pipeline's frames (rounding vs truncation: 1 level)
    from osp_core.io import from_model_output

    vae = load_vae(header["model"], torch.device("cpu"), torch.float32)
    vae.enable_tiling()
    via_vae_decode = from_model_output(decode(vae, saved.latents)[0])
    assert (via_vae_decode.int() - pipe.decode_latents(final)[0].int()).abs().max() <= 1

    # and the command itself finds the VAE and the frame rate in the header (in this process:
    # torch is already imported)
    from typer.testing import CliRunner

    from osp_cli.main import app

    result = CliRunner().invoke(app, ["vae", "decode", record["latents"], "-o", str(tmp_path / "decoded.mp4"), "--json"])
    assert result.exit_code == 0, result.output
    with av.open(str(tmp_path / "decoded.mp4")) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        assert float(stream.average_rate) == 12
    assert len(frames) == 9 and frames[0].shape == (32, 32, 3)


def test_saved_latents_decode_in_the_dtype_they_were_sampled_in(osp_in_process, tiny_repo, tmp_path):
    """Sampling defaults to bf16 on CPUs with bf16 units, `osp vae decode` to fp32: decoding
    saved latents in fp32 gave frames up to 33 levels from the sampled ones. The header records
    the sampling dtype and decode uses it unless --dtype says otherwise."""
    from osp_core.jobs.sampling import run_sampling
    from osp_core.jobs.sampling_plan import SamplingJob
    from osp_core.jobs.records import load_latents

    job = SamplingJob(prompts=["a red balloon"], model=str(tiny_repo), steps=4, seed=3, frames=9, height=32, width=32, dtype="bf16", save_latents=True, output_dir=tmp_path / "s")
    latents = run_sampling(job).videos[0]["latents"]
    assert load_latents(latents).metadata["dtype"] == "bf16"
    decoded = {}
    for name, options in (("default", ()), ("bf16", ("--dtype", "bf16")), ("fp32", ("--dtype", "fp32"))):
        proc = osp_in_process("vae", "decode", latents, "-o", str(tmp_path / f"{name}.mp4"), "--json", *options)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["dtype"] == (name if name != "default" else "bf16")
        decoded[name] = (tmp_path / f"{name}.mp4").read_bytes()
    assert decoded["default"] == decoded["bf16"] != decoded["fp32"]


def test_one_frame_is_written_as_a_png(osp_in_process, tiny_repo, tmp_path):
    """`osp t2v sample --frames 1` wrote a one-frame mp4."""
    from PIL import Image

    proc = osp_in_process("t2v", "sample", "a cat", "--model", str(tiny_repo), "--frames", "1", "--height", "32", "--width", "32", "--steps", "4", "--seed", "5", "-o", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    video = json.loads(proc.stdout)["videos"][0]
    assert Path(video["video"]).name == "a-cat-5.png" and sorted(p.name for p in tmp_path.iterdir()) == ["a-cat-5.json", "a-cat-5.png"]
    with Image.open(video["video"]) as image:
        assert image.format == "PNG" and image.size == (32, 32)


def test_long_frames_warn_once_and_schedulers_log_nothing(tiny_repo, tmp_path):
    """--frames past every trained length warns once, naming the weights; DPMSolverSinglestep's
    diffusers log line (its default config's final step) stays off stderr."""
    proc = run_osp(
        "t2v", "sample", "a cat", "--model", str(tiny_repo), "--frames", "13", "--height", "32", "--width", "32",
        "--steps", "4", "--seed", "3", "--scheduler", "DPMSolverSinglestep", "-o", str(tmp_path), "--json", env=ONE_THREAD,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == ["warning: 13 frames is longer than any trained length; using the 9x32x32 weights (trained on 9 frames)"]
    assert json.loads(proc.stdout)["videos"][0]["num_frames"] == 13


def test_failed_runs_leave_no_output_folder(tiny_repo, tmp_path):
    """A run that fails after the checks (device, T5, Hub) leaves no empty -o folder behind."""
    out = tmp_path / "new" / "videos"
    if not torch.cuda.is_available():
        assert_one_line_error(run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(tiny_repo), "--device", "cuda", "-o", str(out)), "cuda")
        assert not (tmp_path / "new").exists()
    # the Hub is unreachable for a (non-default) Hub repository: fails in the loader, after the folder was made
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", "example/osp-finetune", "-o", str(out), env={"HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, "'example/osp-finetune' is not in the local")
    assert not (tmp_path / "new").exists()


def test_released_repo_checks_t5_before_downloading(tmp_path):
    """For the default (released) repository T5 comes from DeepFloyd/t5-v1_1-xxl: checked first."""
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "-o", str(tmp_path / "out"), env={"HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, "T5 text encoder 'DeepFloyd/t5-v1_1-xxl'", "--text-encoder DIR")


def test_missing_t5_fails_at_once_naming_text_encoder(tiny_repo, tmp_path):
    """The released repository has no text_encoder/ (T5 comes from DeepFloyd/t5-v1_1-xxl): with
    the Hub out of reach that is one line, before any weights load."""
    repo = tmp_path / "repo"
    for name in ("vae", "9x32x32"):
        (repo / name).mkdir(parents=True)
        (repo / name / "config.json").symlink_to(tiny_repo / name / "config.json")
        # weights that cannot load: a run that read any weights before checking T5 fails on them
        (repo / name / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(repo), "-o", str(tmp_path / "out"), env={"HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, "DeepFloyd/t5-v1_1-xxl", "--text-encoder DIR", "HF_HUB_OFFLINE")
    assert not (tmp_path / "out").exists()
    # the same repository with T5 found gets as far as the weights, and fails on them
    for name in ("text_encoder", "tokenizer"):
        (repo / name).symlink_to(tiny_repo / name)
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(repo), "-o", str(tmp_path / "out"), env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode != 0 and "DeepFloyd" not in proc.stderr and "safetensors" in proc.stderr.lower(), proc.stderr


def test_text_encoder_that_is_not_t5(tiny_repo, tmp_path):
    vlm = tmp_path / "vlm"
    vlm.mkdir()
    (vlm / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}))
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(tiny_repo), "--text-encoder", str(vlm), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, "is not a T5 encoder (model_type llava)", "--text-encoder")
    assert not (tmp_path / "out").exists()  # (a VAE folder: see tests/pipelines, test_text_encoder_must_be_a_t5)


def test_clean_caption_without_its_packages(tiny_repo, tmp_path):
    """--clean-caption needs beautifulsoup4 and ftfy: said at once (here they are made unimportable)."""
    shadow = tmp_path / "shadow"
    for module in ("bs4", "ftfy"):
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    proc = run_osp("t2v", "sample", "a cat", *SIZE_ARGS, "--model", str(tiny_repo), "--clean-caption", "-o", str(tmp_path / "out"), env={"PYTHONPATH": str(shadow)})
    assert_one_line_error(proc, "--clean-caption needs beautifulsoup4 and ftfy", "pip install 'osp[clean-caption]'")


def test_prompt_file_with_a_byte_order_mark(tmp_path):
    from osp_core.jobs.sampling_plan import read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffA cat\nA dog\n".encode())
    assert read_prompts(None, str(prompts)) == ["A cat", "A dog"]


def _repo_with_sampling(tiny_repo: Path, folder: Path, sampling: str) -> Path:
    """The tiny repository (its parts linked, not copied) plus a sampling.json."""
    folder.mkdir()
    for part in tiny_repo.iterdir():
        (folder / part.name).symlink_to(part)
    (folder / "sampling.json").write_text(sampling)
    return folder


def test_unset_settings_come_from_the_model(tiny_repo, tmp_path):
    """No size flags: the 9x32x32 weights' size; no --fps/--steps/--scheduler: sampling.json's."""
    repo = _repo_with_sampling(tiny_repo, tmp_path / "repo", '{"fps": 12, "steps": 4, "scheduler": "ddim"}')
    proc = run_osp("t2v", "sample", "a cat", "--model", str(repo), "--seed", "1", "-o", str(tmp_path / "out"), "--json", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(Path(json.loads(proc.stdout)["videos"][0]["sidecar"]).read_text())["settings"]
    assert {k: settings[k] for k in ("frames", "height", "width", "fps", "steps", "scheduler", "guidance")} == {
        "frames": 9, "height": 32, "width": 32, "fps": 12.0, "steps": 4, "scheduler": "DDIMScheduler", "guidance": 7.5,
    }  # fmt: skip
    # flags still win over the model's defaults
    proc = run_osp("t2v", "sample", "a cat", "--model", str(repo), "--seed", "1", "--fps", "6", "--steps", "5", "-o", str(tmp_path / "out2"), "--json", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(Path(json.loads(proc.stdout)["videos"][0]["sidecar"]).read_text())["settings"]
    assert (settings["fps"], settings["steps"]) == (6.0, 5)


@pytest.mark.parametrize(
    "sampling, needles",
    [
        ("{not json", ("sampling.json' is not readable JSON", "fix or delete sampling.json")),
        ('["fps", 8]', ("is not a JSON object",)),
        ('{"fps": 8, "frames": 17}', ("unknown key 'frames'", "fps, steps, guidance, scheduler")),
        ('{"steps": 2.5}', ("'steps'", "must be an integer", "2.5")),
        ('{"fps": "fast"}', ("'fps'", "must be a number")),
        ('{"scheduler": "Foo"}', ("unknown scheduler 'Foo'",)),
        ('{"edit_strength": 1.5}', ("'edit_strength'", "out of range")),
    ],
)
def test_bad_sampling_json_is_one_line(tiny_repo, tmp_path, sampling, needles):
    repo = _repo_with_sampling(tiny_repo, tmp_path / "repo", sampling)
    proc = run_osp("t2v", "sample", "a cat", "--model", str(repo), "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "out").exists()
