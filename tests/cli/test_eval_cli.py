"""`osp eval shapes` and `osp eval edit` as a user runs them: grading a synthetic dataset, its
reconstructions and an edit from its sidecar, and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from osp_core.eval.edit import make_edit_task
from osp_core.io import write_video
from osp_core.pipelines.edit_inputs import parse_track
from tests.conftest import assert_one_line_error, run_osp


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


def test_eval_edit_cli_reads_sidecars(osp_in_process, tmp_path):
    task = make_edit_task(np.random.default_rng(90001))
    write_video(tmp_path / "src.mp4", task.source, fps=8)
    write_video(tmp_path / "out.mp4", task.target, fps=8)
    Image.fromarray(task.first_frame.numpy()).save(tmp_path / "first.png")
    track = parse_track(task.track_arg, 17).tolist()
    (tmp_path / "out.json").write_text(json.dumps({"source": "src.mp4", "region": {"box": list(task.box)}, "first_frame": "first.png", "tracks": [track]}))
    proc = osp_in_process("eval", "edit", str(tmp_path / "out.mp4"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    row = report["edits"][0]
    assert row["color"] == row["expected_color"] and row["shape"] == row["expected_shape"]
    assert row["psnr_outside"] > 45 and row["trajectory_error"] < 1.5  # one H.264 pass: 48.5 dB measured
    assert report["summary"]["edits"] == 1
    table = osp_in_process("eval", "edit", str(tmp_path / "out.mp4"))
    assert table.returncode == 0 and "trajectory error" in table.stderr
    (tmp_path / "lonely.mp4").write_bytes((tmp_path / "src.mp4").read_bytes())
    assert_one_line_error(osp_in_process("eval", "edit", str(tmp_path / "lonely.mp4")), "no readable `osp edit` sidecar")
