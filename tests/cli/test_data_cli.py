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
    for args, needle in ((["--variety", "loose"], "--variety"), (["--variety", "wide", "--objects", "2"], "one object"), (["--variety", "hues", "--objects", "2"], "--variety hues draws one object")):
        proc = osp_in_process("data", "synth", "--out", str(tmp_path / "bad"), "--num", "2", *args)
        assert_one_line_error(proc, needle)
        assert not (tmp_path / "bad").exists()


def test_synth_and_eval_take_the_same_colours_and_shapes(tmp_path, osp_in_process):
    """An added colour and the new shapes are drawn, written to mp4 and judged back (same
    options); bad options are one line and leave nothing behind."""
    world = ["--color", "orange=235,150,40", "--colors", "orange,blue", "--shape", "star,diamond"]
    proc = osp_in_process("data", "synth", "--out", str(tmp_path / "d"), "--num", "8", "--seed", "2", *world, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["shapes"] == ["star", "diamond"]
    entries = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert {e["cap"].split()[1] for e in entries} == {"orange", "blue"} and {e["cap"].split()[2] for e in entries} == {"star", "diamond"}
    assert all(e["params"]["rgb"] == [235, 150, 40] for e in entries if "orange" in e["cap"])
    videos = sorted(str(p) for p in (tmp_path / "d" / "videos").glob("*.mp4"))
    proc = osp_in_process("eval", "shapes", *videos, "--color", "orange=235,150,40", "--shape", "circle,square,triangle,star,diamond", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)["summary"]
    assert (summary["color_accuracy"], summary["shape_accuracy"], summary["direction_accuracy"]) == (1.0, 1.0, 1.0)
    # without --color the captions name a colour the judge does not know
    orange = next(str(tmp_path / "d" / e["path"]) for e in entries if "orange" in e["cap"])
    assert_one_line_error(osp_in_process("eval", "shapes", orange), "not a caption of the shapes world", "--color")
    for args, needle in ((["--color", "orange=235,150"], "NAME=R,G,B"), (["--colors", "pink"], "unknown colour 'pink'"), (["--shape", "hexagon"], "unknown shape"), (["--color", "red=200,0,0"], "built-in colour")):
        proc = osp_in_process("data", "synth", "--out", str(tmp_path / "bad"), "--num", "2", *args)
        assert_one_line_error(proc, needle)
        assert proc.returncode == 2 and not (tmp_path / "bad").exists()
        assert_one_line_error(osp_in_process("eval", "shapes", orange, *args), needle)
