"""`osp t2v sample` as a user runs it: videos, sidecars, determinism and every bad input."""

from __future__ import annotations

import json

import av
import pytest
from safetensors import safe_open

from tests.conftest import assert_one_line_error, run_osp

SEED = 7
LONG_PROMPT = "a slow pan over a quiet harbour at dawn, " * 8 + "END OF THE LONG PROMPT"
SIZE_ARGS = ("--frames", "9", "--height", "32", "--width", "32")
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
        "frames": 9, "height": 32, "width": 32, "steps": 4, "guidance": 7.5, "scheduler": "PNDMScheduler",
        "fps": 12.0, "num_videos": 1, "device": "cpu", "dtype": "fp32", "offload": False, "tile": True,
        "clean_caption": False,
    }  # fmt: skip
    assert sidecar["models"] == {"model": str(tiny_repo), "version": "9x32x32", "text_encoder": f"{tiny_repo}/text_encoder"}
    assert sidecar["num_frames"] == 9 and sidecar["size"] == [32, 32]
    assert sidecar["video"] == video["video"]
    with safe_open(sidecar["latents"], framework="pt") as handle:
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


def test_same_seed_gives_the_same_file(sampled, tiny_repo, tmp_path):
    out, _ = sampled
    proc = run_osp(
        "t2v", "sample", "A Shiba Inu", "wearing a beret", *SIZE_ARGS, "--steps", "4", "--seed", str(SEED),
        "--negative-prompt", "blurry", "--model", str(tiny_repo), "-o", str(tmp_path), "--fps", "12", env=ONE_THREAD,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = f"a-shiba-inu-wearing-a-beret-{SEED}.mp4"
    assert (tmp_path / name).read_bytes() == (out / "videos" / name).read_bytes()


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
    ],
)
def test_bad_input_is_one_line(args, needles, tmp_path):
    proc = run_osp("t2v", "sample", *args, "-o", str(tmp_path / "out"))
    assert_one_line_error(proc, *needles)


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
