"""`osp data synth` as a user runs it: a reproducible dataset, the wide variety, and files it
did not write kept."""

from __future__ import annotations

import json

import pytest

from osp_core.data import shapes
from osp_core.io import read_video
from tests.conftest import assert_one_line_error, run_osp


def test_synth_cli_writes_a_reproducible_dataset(tmp_path):
    proc = run_osp("data", "synth", "--out", str(tmp_path / "a"), "--num", "4", "--seed", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    entries = json.loads((tmp_path / "a" / "annotations.json").read_text())
    assert len(entries) == 4 and all(set(e) >= {"path", "cap"} for e in entries)
    root, annotation = (tmp_path / "a" / "data.txt").read_text().strip().split(",")
    assert annotation == str((tmp_path / "a" / "annotations.json").resolve()) and summary["clips"] == 4
    video = read_video(f"{root}/{entries[0]['path']}")
    assert video.num_frames == 17 and video.size == (64, 64) and video.fps == pytest.approx(8)

    again = list(shapes.iter_clips(4, seed=3))
    assert [c.caption for c in again] == [e["cap"] for e in entries]
    proc = run_osp("data", "synth", "--out", str(tmp_path / "a"), "--num", "4")
    assert_one_line_error(proc, "already holds", "--overwrite")
    assert json.loads((tmp_path / "a" / "annotations.json").read_text()) == entries


def test_synth_never_replaces_a_file_it_did_not_write(tmp_path, osp_in_process):
    """A user's file where a clip would go (and no annotation yet) is refused, not replaced;
    --overwrite replaces it. A bad --seed leaves no folder behind."""
    out = tmp_path / "d"
    (out / "videos").mkdir(parents=True)
    mine = out / "videos" / "00000.mp4"
    mine.write_bytes(b"my own video")
    proc = osp_in_process("data", "synth", "--out", str(out), "--num", "2")
    assert_one_line_error(proc, "00000.mp4", "--overwrite")
    assert proc.returncode == 2 and mine.read_bytes() == b"my own video" and not (out / "annotations.json").exists()
    assert osp_in_process("data", "synth", "--out", str(out), "--num", "2", "--overwrite").returncode == 0
    assert read_video(mine).num_frames == 17
    fresh = tmp_path / "new" / "data"
    proc = osp_in_process("data", "synth", "--out", str(fresh), "--num", "2", "--seed", "-1")
    assert_one_line_error(proc, "--seed")
    assert proc.returncode == 2 and not (tmp_path / "new").exists()


def test_synth_cli_writes_the_wide_variety_and_refuses_unknown_ones(tmp_path, osp_in_process):
    proc = osp_in_process("data", "synth", "--out", str(tmp_path / "w"), "--num", "3", "--variety", "wide", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((tmp_path / "w" / "annotations.json").read_text())
    assert all(len(e["params"]["rgb"]) == 3 and isinstance(e["params"]["antialias"], bool) for e in entries)
    plain = osp_in_process("data", "synth", "--out", str(tmp_path / "p"), "--num", "1")
    assert plain.returncode == 0 and "rgb" not in json.loads((tmp_path / "p" / "annotations.json").read_text())[0]["params"]
    for args, needle in ((["--variety", "loose"], "--variety"), (["--variety", "wide", "--objects", "2"], "one object")):
        proc = osp_in_process("data", "synth", "--out", str(tmp_path / "bad"), "--num", "2", *args)
        assert_one_line_error(proc, needle)
        assert not (tmp_path / "bad").exists()
