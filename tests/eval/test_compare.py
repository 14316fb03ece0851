"""`osp eval compare`: videos matched by name, PSNR/SSIM/LPIPS, sidecar costs, the shapes judge."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest
import torch

from osp_core.data.shapes import render, sample_clip
from osp_core.errors import InputError
from osp_core.eval.compare import compare_pair, judge_shapes, pair_videos, summarize
from tests.conftest import run_osp
from tests.train.test_losses import _random_lpips_file


def write_lossless(path, frames: np.ndarray) -> None:
    """FFV1 in Matroska: the frames read back exactly, so a distortion's PSNR is known."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=8)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def write_sidecar(video, prompt: str, denoise: float, evaluations: int, model: str = "builtin:shapes") -> None:
    sidecar = {"prompt": prompt, "settings": {"cache": {"method": "none", "transformer_evaluations": evaluations}}, "models": {"model": model}, "seconds": {"denoise": denoise}}
    video.with_suffix(".json").write_text(json.dumps(sidecar))


def shapes_clip(seed: int, color: str, shape: str, direction: str) -> np.ndarray:
    return render(sample_clip(np.random.default_rng(seed), color, shape, direction)).numpy()


@pytest.fixture
def folders(tmp_path):
    """Two folders with the same two names: one video identical, one 5 levels brighter
    everywhere (the frames stay inside 0..255, so its MSE is exactly 25)."""
    ref, cand = tmp_path / "ref", tmp_path / "cand"
    ref.mkdir(), cand.mkdir()
    same = shapes_clip(0, "red", "circle", "right")
    shifted = shapes_clip(1, "blue", "square", "up").clip(0, 250)
    write_lossless(ref / "same.mkv", same)
    write_lossless(cand / "same.mkv", same)
    write_lossless(ref / "shifted.mkv", shifted)
    write_lossless(cand / "shifted.mkv", shifted + 5)
    write_lossless(ref / "only-ref.mkv", same)
    for name, prompt in (("same", "a red circle moving right"), ("shifted", "a blue square moving up")):
        write_sidecar(ref / f"{name}.mkv", prompt, denoise=4.0, evaluations=159)
        write_sidecar(cand / f"{name}.mkv", prompt, denoise=1.0, evaluations=40)
    return ref, cand


def test_identical_videos_give_infinite_psnr_and_lpips_zero_and_a_known_shift_its_psnr(folders, tmp_path):
    ref, cand = folders
    pairs, only_ref, only_cand = pair_videos(ref, cand)
    assert [p.name for p in pairs] == ["same.mkv", "shifted.mkv"] and only_ref == ["only-ref.mkv"] and only_cand == []
    _random_lpips_file(tmp_path / "lpips.safetensors")
    from osp_core.train.losses import build_lpips, load_lpips_state

    lpips = build_lpips(load_lpips_state(str(tmp_path / "lpips.safetensors")))
    same, shifted = (compare_pair(p, lpips) for p in pairs)
    assert same["identical"] and math.isinf(same["psnr"]) and same["ssim"] == 1.0 and same["lpips"] == 0.0
    assert shifted["psnr"] == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-3)  # 34.151 dB
    assert not shifted["identical"] and shifted["ssim"] < 1.0 and shifted["lpips"] > 0.0
    summary = summarize([same, shifted])
    assert summary["psnr"] == pytest.approx(shifted["psnr"]) and summary["identical"] == 1  # the mean of the finite ones
    assert summarize([same])["psnr"] == math.inf


def test_the_command_sets_costs_side_by_side_and_judges_the_shapes_world(folders):
    ref, cand = folders
    proc = run_osp("eval", "compare", str(ref), str(cand), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    summary = report["summary"]
    assert summary["reference"]["denoise_seconds"] == 8.0 and summary["candidate"]["transformer_evaluations"] == 80
    assert summary["denoise_speedup"] == 4.0 and summary["only_in_reference"] == ["only-ref.mkv"]
    # rendered clips of the shapes world: the judge finds each caption on both sides
    assert summary["reference"]["judge_accuracy"] == summary["candidate"]["judge_accuracy"] == 1.0
    assert report["videos"][0]["psnr"] is None and report["videos"][0]["identical"] is True  # strict JSON: no Infinity


def test_the_judge_grades_against_the_prompt():
    frames = torch.from_numpy(shapes_clip(3, "green", "triangle", "left"))
    assert judge_shapes(frames, "a green triangle moving left")["correct"]
    wrong = judge_shapes(frames, "a green triangle moving right")
    assert not wrong["correct"] and wrong["direction"] == "left"
    assert judge_shapes(frames, "a cat playing piano") is None  # not a caption of the shapes world


def test_folders_sharing_no_video_or_videos_of_other_sizes_are_refused(folders, tmp_path):
    ref, cand = folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video name is in both"):
        pair_videos(ref, tmp_path / "empty")
    small = tmp_path / "small"
    small.mkdir()
    write_lossless(small / "same.mkv", shapes_clip(0, "red", "circle", "right")[:9])
    (pair,), _, _ = pair_videos(ref, small)
    with pytest.raises(InputError, match="17x64x64 in the reference and 9x64x64 in the candidate"):
        compare_pair(pair)


def test_unreadable_videos_and_sidecars_nobody_can_trust_are_left_out_not_fatal(folders, tmp_path):
    ref, cand = folders
    (cand / "shifted.mkv").write_bytes(b"not a video at all")
    sidecar = json.loads((cand / "same.json").read_text())
    sidecar["seconds"]["denoise"] = "NaN"
    sidecar["settings"]["cache"]["transformer_evaluations"] = -1
    (cand / "same.json").write_text(json.dumps(sidecar))
    pairs, _, _ = pair_videos(ref, cand)
    rows = [compare_pair(p) for p in pairs]
    assert "error" in rows[1] and "shifted.mkv" in rows[1]["error"]
    assert rows[0]["candidate"] == {"denoise_seconds": None, "transformer_evaluations": None}
    summary = summarize(rows)
    assert summary["videos"] == 1 and summary["unreadable"] == ["shifted.mkv"]
    assert summary["candidate"]["denoise_seconds"] is None and summary["denoise_speedup"] is None
    with pytest.raises(InputError, match="is a file, not a folder"):
        pair_videos(ref / "same.mkv", cand)
    (tmp_path / "bad.safetensors").write_text("oops")
    from osp_core.train.losses import load_lpips_state

    with pytest.raises(InputError, match="bad.safetensors' are unreadable"):
        load_lpips_state(str(tmp_path / "bad.safetensors"))
