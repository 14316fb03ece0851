"""`osp vae encode | decode | recon` as a user runs them, including every bad input."""

from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from osp_core.io import read_video, write_video
from tests.conftest import assert_one_line_error, run_osp


def _moving_square(path, frames=19, size=(40, 48)):
    video = torch.zeros(frames, *size, 3, dtype=torch.uint8)
    for i in range(frames):
        video[i, 10:22, 2 * i : 2 * i + 12] = torch.tensor([230, 40, 40], dtype=torch.uint8)
    write_video(path, video, fps=8)
    return path


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


@pytest.fixture()
def clip(tmp_path):
    return _moving_square(tmp_path / "clip.mp4")


def test_encode_then_decode_round_trip(tmp_path, clip, tiny_repo):
    latents = tmp_path / "z.safetensors"
    proc = run_osp("vae", "encode", str(clip), "-o", str(latents), "--model", str(tiny_repo), "--frames", "auto", "--size", "32x40", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["latent_shape"] == [1, 4, 5, 4, 5]
    with safe_open(str(latents), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("latents").shape == (1, 4, 5, 4, 5)
    assert json.loads(meta["frames"]) == 17 and json.loads(meta["fps"]) == 8.0
    assert (json.loads(meta["height"]), json.loads(meta["width"])) == (32, 40)
    assert json.loads(meta["scaling_factor"]) == pytest.approx(0.18215) and meta["model"] == str(tiny_repo)

    out = tmp_path / "out.mp4"
    proc = run_osp("vae", "decode", str(latents), "-o", str(out), "--json")  # model taken from the file
    assert proc.returncode == 0, proc.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert round(float(stream.average_rate)) == 8
    decoded = read_video(out)
    assert decoded.num_frames == 17 and decoded.size == (32, 40)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_recon_prints_psnr_and_ssim(tmp_path, clip, tiny_repo):
    out = tmp_path / "rec.mp4"
    proc = run_osp("vae", "recon", str(clip), "-o", str(out), "--model", str(tiny_repo), "--frames", "9", "--stride", "2", "--size", "32x32", "--no-tile", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 9 and isinstance(summary["psnr"], float) and -1 <= summary["ssim"] <= 1
    assert read_video(out).num_frames == 9


def test_recon_psnr_and_ssim_are_those_of_the_files(tmp_path, clip):
    """The printed PSNR / SSIM, recomputed from the input file (cut as the command cuts it) and
    the written video: equal up to the mp4 encoding's own loss. The trained built-in VAE gives a
    round trip whose numbers mean something (a random one scores ~5 dB whatever it compares)."""
    from osp_core.metrics import psnr, ssim
    from osp_core.pipelines.video_vae import load_clip

    out = tmp_path / "rec.mp4"
    proc = run_osp("vae", "recon", str(clip), "-o", str(out), "--model", "builtin:shapes", "--frames", "9", "--stride", "2", "--size", "40x48", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    written = read_video(out).frames
    source = load_clip(clip, "9", 2, (40, 48), (4, 8)).frames  # frames 0, 2, ..., 16 at 40x48
    assert source.shape == written.shape == (9, 40, 48, 3)
    assert psnr(source, written) == pytest.approx(summary["psnr"], abs=0.5)
    assert ssim(source, written) == pytest.approx(summary["ssim"], abs=0.05)  # 4:2:0 chroma moves SSIM ~0.04
    assert summary["psnr"] > 12 and summary["ssim"] > 0.2  # a reconstruction, not noise
    # against another cut of the input (every frame from the first) the numbers differ: the check can fail
    other = load_clip(clip, "9", 1, (40, 48), (4, 8)).frames
    assert abs(psnr(other, written) - summary["psnr"]) > 1.5


def test_bad_frame_count_names_valid_counts(tmp_path, clip, tiny_repo):
    out = tmp_path / "z.safetensors"
    proc = run_osp("vae", "encode", str(clip), "-o", str(out), "--model", str(tiny_repo), "--size", "32x32")
    assert_one_line_error(proc, "19 frames", "--frames auto", "17")
    proc = run_osp("vae", "encode", str(clip), "-o", str(out), "--model", str(tiny_repo), "--frames", "10", "--size", "32x32")
    assert_one_line_error(proc, "not 4k+1", "9 or 13")
    assert not out.exists()


def test_bad_size_and_missing_or_corrupt_video(tmp_path, clip, tiny_repo):
    out = tmp_path / "z.safetensors"
    proc = run_osp("vae", "encode", str(clip), "-o", str(out), "--model", str(tiny_repo), "--frames", "auto", "--size", "30x30")
    assert_one_line_error(proc, "multiple of 8", "24x24")
    odd = _moving_square(tmp_path / "odd.mp4", frames=9, size=(36, 36))
    proc = run_osp("vae", "encode", str(odd), "-o", str(out), "--model", str(tiny_repo))
    assert_one_line_error(proc, "36x36", "--size 32x32")
    proc = run_osp("vae", "encode", str(tmp_path / "missing.mp4"), "-o", str(out), "--model", str(tiny_repo))
    assert_one_line_error(proc, "does not exist")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    proc = run_osp("vae", "recon", str(corrupt), "-o", str(tmp_path / "r.mp4"), "--model", str(tiny_repo))
    assert_one_line_error(proc, "corrupt.mp4")
    assert not out.exists() and not (tmp_path / "r.mp4").exists()


def test_video_without_frames(tmp_path, tiny_repo):
    audio_only = tmp_path / "audio.mp4"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    proc = run_osp("vae", "encode", str(audio_only), "-o", str(tmp_path / "z.safetensors"), "--model", str(tiny_repo))
    assert_one_line_error(proc, "no video stream")


def test_latents_with_wrong_channels_and_bad_model_folders(tmp_path, tiny_repo):
    bad = tmp_path / "bad.safetensors"
    save_file({"latents": torch.zeros(1, 3, 2, 4, 4)}, str(bad), metadata={"model": str(tiny_repo)})
    proc = run_osp("vae", "decode", str(bad), "-o", str(tmp_path / "out.mp4"))
    assert_one_line_error(proc, "(B, 4, t, h, w)")
    assert not (tmp_path / "out.mp4").exists()

    empty_model = tmp_path / "empty_model"
    empty_model.mkdir()
    save_file({"latents": torch.zeros(1, 4, 2, 4, 4)}, str(tmp_path / "ok.safetensors"))
    proc = run_osp("vae", "decode", str(tmp_path / "ok.safetensors"), "-o", str(tmp_path / "out.mp4"), "--model", str(empty_model))
    assert_one_line_error(proc, "no VAE config", code=3)  # a model that cannot load
    proc = run_osp("vae", "decode", str(tmp_path / "ok.safetensors"), "-o", str(tmp_path / "out.mp4"), "--model", "LanguageBind/Open-Sora-Plan-v1.1.0")
    assert_one_line_error(proc, "HF_HUB_OFFLINE", "--model DIR")


def test_hub_unreachable_hint(tmp_path, clip):
    # Online mode with no network (or a bogus endpoint): the error names --model DIR and HF_HUB_OFFLINE.
    proc = run_osp(
        "vae", "encode", str(clip), "-o", str(tmp_path / "z.safetensors"), "--frames", "auto",
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )  # fmt: skip
    assert_one_line_error(proc, "--model DIR", "HF_HUB_OFFLINE=1")


def test_partial_output_is_never_left(tmp_path, clip, tiny_repo):
    """An existing output survives a failed run untouched."""
    out = tmp_path / "z.safetensors"
    out.write_bytes(b"previous")
    proc = run_osp("vae", "encode", str(clip), "-o", str(out), "--model", str(tiny_repo), "--frames", "10")
    assert proc.returncode != 0 and out.read_bytes() == b"previous"
    # --overwrite lets the run start; it fails reading the video, after the model loaded
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_osp("vae", "encode", str(broken), "-o", str(out), "--model", str(tiny_repo), "--overwrite")
    assert_one_line_error(proc)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_model_folder_can_be_the_vae_folder_itself(tmp_path, clip, tiny_repo):
    vae_only = tmp_path / "vae_only"
    shutil.copytree(tiny_repo / "vae", vae_only)
    proc = run_osp("vae", "encode", str(clip), "-o", str(tmp_path / "z.safetensors"), "--model", str(vae_only), "--frames", "5", "--size", "16x16")
    assert proc.returncode == 0, proc.stderr


def test_checkpoint_missing_a_tensor_is_one_line(tmp_path, tiny_repo, clip):
    from safetensors.torch import load_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_repo / "vae", broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("decoder.conv_out")}
    save_file(state, str(weights))
    proc = run_osp("vae", "encode", str(clip), "-o", str(tmp_path / "z.safetensors"), "--model", str(broken), "--frames", "5", "--size", "16x16")
    assert_one_line_error(proc, "does not fit", "decoder.conv_out", code=3)  # a model that cannot load


def test_same_latents_decode_to_the_same_video_in_every_run(tmp_path):
    """Two runs of `osp vae decode` on one latent file write the same mp4 (bytes and decoded
    frames): the README's "same seed, same video" holds through the H.264 encoding step."""
    from osp_core.jobs.records import save_latents

    latents = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    source = save_latents(tmp_path / "z.safetensors", latents, {"model": "builtin:shapes", "fps": 8})
    outputs = []
    for name in ("a.mp4", "b.mp4"):
        proc = run_osp("vae", "decode", str(source), "-o", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        outputs.append(tmp_path / name)
    assert torch.equal(read_video(outputs[0]).frames, read_video(outputs[1]).frames)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


def test_an_input_or_an_existing_output_is_never_replaced(tmp_path, clip, tiny_repo, osp_in_process):
    original = clip.read_bytes()
    proc = osp_in_process("vae", "recon", str(clip), "-o", str(clip), "--model", str(tiny_repo), "--frames", "5", "--overwrite")
    assert_one_line_error(proc, "is the input")
    assert proc.returncode == 2 and clip.read_bytes() == original
    latents = tmp_path / "z.safetensors"
    latents.write_bytes(b"an earlier result")
    args = ("vae", "encode", str(clip), "-o", str(latents), "--model", str(tiny_repo), "--frames", "5", "--size", "16x16")
    proc = osp_in_process(*args)
    assert_one_line_error(proc, "already exists", "--overwrite")
    assert proc.returncode == 2 and latents.read_bytes() == b"an earlier result"
    assert osp_in_process(*args, "--overwrite").returncode == 0
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    proc = osp_in_process("vae", "decode", str(latents), "-o", str(out))
    assert_one_line_error(proc, "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    proc = osp_in_process("vae", "recon", str(tmp_path), "-o", str(tmp_path / "r.mp4"), "--model", str(tiny_repo))
    assert_one_line_error(proc, "is a folder, not a file", "clip.mp4")  # not "does not exist"


def test_bad_frame_rates_and_latent_files_are_input_errors(tmp_path, tiny_repo, osp_in_process):
    good = tmp_path / "z.safetensors"
    save_file({"latents": torch.zeros(1, 4, 2, 4, 4)}, str(good), metadata={"model": str(tiny_repo), "fps": "8"})
    out = tmp_path / "out.mp4"
    for fps in ("-5", "0", "nan", "inf"):
        proc = osp_in_process("vae", "decode", str(good), "-o", str(out), "--fps", fps)
        assert_one_line_error(proc, "--fps")
        assert proc.returncode == 2
    cases = {
        "abc.safetensors": ({"latents": torch.zeros(1, 4, 2, 4, 4)}, {"fps": "abc"}, "fps"),
        "zero_fps.safetensors": ({"latents": torch.zeros(1, 4, 2, 4, 4)}, {"fps": "0"}, "fps"),
        "no_frames.safetensors": ({"latents": torch.zeros(1, 4, 0, 4, 4)}, {"fps": "8"}, "empty"),
    }
    for name, (tensors, meta, needle) in cases.items():
        save_file(tensors, str(tmp_path / name), metadata={"model": str(tiny_repo), **meta})
        proc = osp_in_process("vae", "decode", str(tmp_path / name), "-o", str(out))
        assert_one_line_error(proc, needle, name)
        assert proc.returncode == 2
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))
    # --fps replaces the header's value; the mp4 plays at the rate reported
    proc = osp_in_process("vae", "decode", str(tmp_path / "abc.safetensors"), "-o", str(out), "--fps", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fps"] == 12 and read_video(out).fps == pytest.approx(12)


def test_a_size_that_cannot_fit_is_refused_before_the_weights_load(tmp_path, clip, tiny_repo, osp_in_process):
    """--size 100000x100000: one line with the --size that fits, not an allocation failure;
    the weights are not even read (they are truncated here, so loading them would fail)."""
    import re

    vae = tmp_path / "vae"
    shutil.copytree(tiny_repo / "vae", vae)
    weights = vae / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    out = tmp_path / "z.safetensors"
    proc = osp_in_process("vae", "encode", str(clip), "-o", str(out), "--model", str(vae), "--frames", "17", "--size", "100000x100000")
    assert_one_line_error(proc, "100000x100000", "available", "--size")
    assert proc.returncode == 2 and not out.exists()
    height, width = map(int, re.search(r"--size (\d+)x(\d+)", proc.stderr).groups())
    assert height == width and 8 <= height < 100000 and height % 8 == 0


def test_recon_of_an_image_writes_a_png(osp_in_process, tmp_path, tiny_repo):
    """One frame is an image: `osp vae recon` of a PNG writes a PNG (it wrote a one-frame mp4);
    an output of the wrong type is refused before the weights load."""
    from PIL import Image

    image = tmp_path / "in.png"
    frame = np.zeros((32, 40, 3), dtype=np.uint8)
    frame[8:20, 4:16] = (230, 40, 40)
    Image.fromarray(frame).save(image)
    proc = osp_in_process("vae", "recon", str(image), "-o", str(tmp_path / "out.png"), "--model", str(tiny_repo), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == 1
    with Image.open(tmp_path / "out.png") as out:
        assert out.format == "PNG" and out.size == (40, 32)
    assert_one_line_error(osp_in_process("vae", "recon", str(image), "-o", str(tmp_path / "out.mp4"), "--model", str(tiny_repo)), "one frame (an image)", "-o out.png")
    clip = _moving_square(tmp_path / "clip.mp4", frames=9, size=(32, 40))
    assert_one_line_error(osp_in_process("vae", "recon", str(clip), "-o", str(tmp_path / "clip.png"), "--model", str(tiny_repo)), "9 frames", "-o clip.mp4")
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "clip.png").exists()


def test_an_image_round_trip_without_a_suffix_suggests_a_png(tmp_path, osp_in_process):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "still.png")
    proc = osp_in_process("vae", "recon", str(tmp_path / "still.png"), "-o", str(tmp_path / "out"), "--model", "builtin:shapes")
    assert_one_line_error(proc, "must end in", "e.g. -o out.png", code=2)
