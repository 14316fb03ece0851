"""`osp eval shapes` on synthetic clips whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from osp_core.data import shapes
from osp_core.eval.shapes import measure
from osp_core.io import write_video
from tests.conftest import assert_one_line_error, run_osp


@pytest.mark.parametrize("combo", [("red", "circle", "right"), ("green", "square", "up"), ("blue", "triangle", "down"), ("yellow", "triangle", "left"), ("white", "circle", "up")])
def test_measure_rendered_clips(combo):
    rng = np.random.default_rng(7)
    for _ in range(3):
        clip = shapes.sample_clip(rng, *combo)
        m = measure(shapes.render(clip))
        assert (m.color, m.shape, m.direction) == combo
        assert m.frames_with_shape == 17


def test_blank_and_static_videos():
    blank = measure(torch.zeros(17, 64, 64, 3, dtype=torch.uint8))
    assert (blank.color, blank.shape, blank.direction) == (None, None, None)
    rng = np.random.default_rng(0)
    still = shapes.render(shapes.sample_clip(rng, "red", "square", "right"))[:1].repeat(17, 1, 1, 1)
    m = measure(still)
    assert m.direction is None and m.color == "red" and m.shape == "square"


def test_cli_grades_a_synthetic_dataset_and_reconstructions(tmp_path):
    data = tmp_path / "data"
    assert run_osp("data", "synth", "--out", str(data), "--num", "6", "--seed", "11").returncode == 0
    videos = sorted((data / "videos").glob("*.mp4"))
    proc = run_osp("eval", "shapes", *map(str, videos), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["summary"]["videos"] == 6
    assert result["summary"]["color_accuracy"] == result["summary"]["shape_accuracy"] == result["summary"]["direction_accuracy"] == 1.0

    # wrong prompts are graded wrong; a degraded copy scores lower PSNR than the original
    prompts = tmp_path / "prompts.txt"
    entries = json.loads((data / "annotations.json").read_text())
    flipped = [e["cap"].replace("right", "TMP").replace("left", "right").replace("TMP", "left").replace("up", "TMP").replace("down", "up").replace("TMP", "down") for e in entries]
    prompts.write_text("\n".join(flipped) + "\n")
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    from osp_core.io import read_video

    from osp_core.metrics import psnr

    expected = []
    for v in videos:
        frames = read_video(v).frames
        write_video(noisy / v.name, (frames.float() * 0.8).to(torch.uint8), fps=8)
        expected.append(psnr(read_video(data / "videos" / v.name).frames, read_video(noisy / v.name).frames))
    proc = run_osp("eval", "shapes", *[str(noisy / v.name) for v in videos], "--prompts", str(prompts), "--reference", str(data / "videos"), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert summary["direction_accuracy"] == 0.0 and summary["color_accuracy"] == 1.0
    assert summary["psnr"] == pytest.approx(sum(expected) / len(expected), abs=0.01)  # the frames as written and read back
    assert summary["psnr"] < 40 and 0 < summary["ssim"] < 1

    proc = run_osp("eval", "shapes", str(videos[0]), "--prompts", str(prompts))
    assert_one_line_error(proc, "6 prompts for 1 videos")
