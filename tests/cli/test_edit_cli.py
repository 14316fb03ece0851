"""`osp edit` as a user runs it: one end-to-end run, and every bad input refused in one line
with nothing written."""

from __future__ import annotations

import json

import pytest

from tests.conftest import assert_one_line_error, run_osp


@pytest.fixture(scope="module")
def tiny_repo(reference_dir):
    return reference_dir / "pipeline" / "tiny-osp-v1.1.0"


def test_edit_end_to_end(inputs, tiny_repo, tmp_path):
    out = tmp_path / "edited.mp4"
    proc = run_osp(
        "edit", str(inputs / "in.mp4"), "-o", str(out), "--box", "0,0,16,32", "--first-frame", str(inputs / "first.png"),
        "--prompt", "a square", "--keep-motion", "--model", str(tiny_repo), "--steps", "4", "--seed", "1", "--dtype", "fp32", "--json",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["engine"] == "blend" and record["track_source"] == "keep-motion" and len(record["tracks"]) >= 1
    assert out.is_file() and out.with_suffix(".json").is_file()
    again = run_osp("edit", str(inputs / "in.mp4"), "-o", str(out), "--box", "0,0,16,32", "--model", str(tiny_repo))
    assert_one_line_error(again, "already exists", "--overwrite")


BAD = [
    (["--box", "0,0,40,16"], "outside the 32x32 (HxW) frame"),
    (["--box", "4,4,4,20"], "empty"),
    (["--box", "1,2,3"], "four integers"),
    ([], "--box or --mask"),
    (["--mask", "{d}/small-mask.png"], "is 32x16 (HxW), the video 32x32 (HxW)"),
    (["--mask", "{d}/empty-mask.png"], "no set pixel"),
    (["--box", "0,0,16,16", "--first-frame", "{d}/first-wide.png"], "resize it to 32x32 (HxW)"),
    (["--box", "0,0,16,16", "--track", "5,5:40,5"], "outside the 32x32 (HxW) frame"),
    (["--box", "0,0,16,16", "--track-file", "{d}/nan-track.json"], "point (nan, 5) at frame 0 is not a finite number"),
    (["--box", "0,0,16,16", "--track-file", "{d}/short-track.json"], "8 points, the edit 9 frames"),
    (["--box", "0,0,16,16", "--track", "5,5:9,5", "--keep-motion"], "not both"),
    (["--box", "0,0,16,16", "--engine", "control"], "no edit control module"),
    (["--box", "0,0,16,16", "--engine", "magic"], "unknown --engine"),
    (["--box", "0,0,16,16", "--strength", "0"], "--strength"),
    (["--box", "0,0,16,16", "--frames", "8"], "not 4k+1"),
]


@pytest.mark.parametrize(("args", "needle"), BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(osp_in_process, inputs, tiny_repo, tmp_path, args, needle):
    out = tmp_path / "sub" / "out.mp4"
    proc = osp_in_process("edit", str(inputs / "in.mp4"), "-o", str(out), *[a.format(d=inputs) for a in args], "--model", str(tiny_repo))
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    ("video", "args", "needles"),
    [
        ("odd.mp4", ["--box", "0,0,16,16"], ("the video is 60x64 (HxW), not a multiple of 16", "e.g. to 48x64 (HxW)")),
        ("wide.mp4", ["--box", "0,0,16,40"], ("outside the 32x48 (HxW) frame", "Y0 < Y1 <= 32")),
        ("wide.mp4", ["--box", "0,0,16,16", "--first-frame", "{d}/first.png"], ("is 32x32 (HxW), the video 32x48 (HxW)", "resize it to 32x48 (HxW)")),
        ("wide.mp4", ["--box", "0,0,16,16", "--track", "5,5:5,40"], ("(5, 35.625) at frame 7 is outside the 32x48 (HxW) frame", "0 <= y < 32")),
    ],
)
def test_frame_sizes_are_height_first_like_everywhere_else(osp_in_process, inputs, tiny_repo, tmp_path, video, args, needles):
    """`osp edit` wrote sizes width-first ("the video is 64x60" for a 60-high video)."""
    proc = osp_in_process("edit", str(inputs / video), "-o", str(tmp_path / "out.mp4"), *[a.format(d=inputs) for a in args], "--model", str(tiny_repo))
    assert_one_line_error(proc, *needles)
