"""Prompt templates, input discovery and the resumable journal."""

from __future__ import annotations

import json

import pytest

from osp_core.caption import journal as jr
from osp_core.caption.sources import collect, default_root, relative_to_root
from osp_core.caption.templates import load_template
from osp_core.errors import InputError

V110_OCR = 'Combine this rough caption: "{}", analyze the image in a comprehensive and detailed manner. "{}" can be recognized in the image.'
V110_GENERAL = "Analyze the image in a comprehensive and detailed manner."


def test_shipped_templates_carry_the_v110_prompts():
    assert load_template("image").prompt == V110_GENERAL
    ocr = load_template("image_ocr")
    assert ocr.prompt == V110_OCR and ocr.fields == ("caption", "ocr")
    assert ocr.render({"caption": "a shop front", "ocr": "OPEN {24h}"}) == (
        'Combine this rough caption: "a shop front", analyze the image in a comprehensive and detailed manner. '
        '"OPEN {24h}" can be recognized in the image.'
    )
    video = load_template("video")
    assert video.kind == "video" and not video.fields
    for topic in ("motion", "camera"):
        assert topic in video.prompt.lower()


def test_template_errors(tmp_path):
    with pytest.raises(InputError, match="unknown prompt template 'nope'"):
        load_template("nope")
    with pytest.raises(InputError, match="does not exist"):
        load_template(str(tmp_path / "missing.yaml"))
    with pytest.raises(InputError, match="needs ocr"):
        load_template("image_ocr").render({"caption": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkind: image\nprompt: 'two {} and {}'\nfields: [caption]\n")
    with pytest.raises(InputError, match="placeholders"):
        load_template(str(bad))
    custom = tmp_path / "mine.yaml"
    custom.write_text("kind: video\nprompt: Describe the motion.\n")
    assert load_template(str(custom)).name == "mine"


def test_collect_walks_folders_and_reads_list_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.mp4", "a/b/two.webm", "a/pic.png", "a/.hidden.mp4", "a/notes.txt.bak"):
        (tmp_path / name).write_bytes(b"x")
    items = collect([tmp_path / "a"])
    assert [i.path.name for i in items] == ["two.webm", "one.mp4"]  # sorted by path: a/b/... before a/one
    assert default_root([tmp_path / "a"], items) == (tmp_path / "a").resolve()
    assert relative_to_root(items[0].path, tmp_path.resolve()).startswith("a/")

    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"path": "a/pic.png", "cap": ["rough"], "ocr": "EXIT"}) + "\n" + json.dumps({"path": "a/gone.png"}) + "\n")
    images = collect([listing], images=True)
    assert [i.path.name for i in images] == ["gone.png", "pic.png"]  # missing entries are kept: reported later
    pic = images[1]
    assert dict(pic.prompt_values) == {"caption": "rough", "ocr": "EXIT"}

    txt = tmp_path / "list.txt"
    txt.write_text("# videos\na/one.mp4\n\na/b/two.webm\n")
    assert len(collect([txt])) == 2
    assert default_root([txt], collect([txt])) == (tmp_path / "a").resolve()


def test_collect_errors(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "i.png").write_bytes(b"x")
    with pytest.raises(InputError, match="does not exist"):
        collect([tmp_path / "missing"])
    with pytest.raises(InputError, match="pass --images"):
        collect([tmp_path / "i.png"])
    with pytest.raises(InputError, match="drop --images"):
        collect([tmp_path / "v.mp4"], images=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no videos found"):
        collect([empty])
    broken = tmp_path / "bad.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        collect([broken])
    with pytest.raises(InputError, match="not inside the dataset root"):
        relative_to_root(tmp_path / "v.mp4", tmp_path / "empty")


def test_a_bad_jsonl_line_is_reported_by_its_line_in_the_file(tmp_path):
    listing = tmp_path / "list.jsonl"
    listing.write_text('{"path": "a.mp4"}\n\n{"path": "b.mp4"\n{"path": "c.mp4"}\n')
    with pytest.raises(InputError, match=r"not valid JSON \(line 3\)"):
        collect([listing])
    broken = tmp_path / "bad.json"
    broken.write_text('[\n  "a.mp4",\n  oops\n]')
    with pytest.raises(InputError, match=r"not valid JSON \(line 3\)"):  # .json keeps the decoder's line
        collect([broken])


def test_journal_merge_rules_and_partial_lines(tmp_path):
    directory = tmp_path / "out.json.journal"
    w = jr.JournalWriter(directory, rank=0)
    w.header({"a": 1}, world_size=1)
    w.record("v.mp4#0:8", "v.mp4", jr.FAILED, frame_idx="0:8", reason="boom")
    w.record("v.mp4#0:8", "v.mp4", jr.CAPTIONED, frame_idx="0:8", annotation={"path": "v.mp4", "cap": "c", "frame_idx": "0:8"})
    w.record("v.mp4#0:8", "v.mp4", jr.FAILED, frame_idx="0:8", reason="later failure does not undo a caption")
    w.record("bad.mp4", "bad.mp4", jr.FAILED, reason="unreadable", scope="file")
    w.close()
    # A killed run leaves half a line; the next run must not glue its first record onto it.
    with open(directory / "rank0.jsonl", "a") as f:
        f.write('{"type": "clip", "key": "half')
    w = jr.JournalWriter(directory, rank=0)
    w.record("bad.mp4#0:8", "bad.mp4", jr.DROPPED, frame_idx="0:8", reason="static")
    w.close()
    w1 = jr.JournalWriter(directory, rank=1)
    w1.record("w.mp4#8:16", "w.mp4", jr.CAPTIONED, frame_idx="8:16", annotation={"path": "w.mp4", "cap": "d", "frame_idx": "8:16"})
    w1.record("w.mp4#0:8", "w.mp4", jr.CAPTIONED, frame_idx="0:8", annotation={"path": "w.mp4", "cap": "e", "frame_idx": "0:8"})
    w1.close()

    state = jr.read_journal(directory)
    assert state.records["v.mp4#0:8"]["status"] == jr.CAPTIONED
    assert "bad.mp4" not in state.records  # the file was read later: its old failure is stale
    assert state.done == {"v.mp4#0:8", "bad.mp4#0:8", "w.mp4#8:16", "w.mp4#0:8"}
    assert [(a["path"], a["frame_idx"]) for a in jr.annotations(state)] == [("v.mp4", "0:8"), ("w.mp4", "0:8"), ("w.mp4", "8:16")]

    jr.check_settings(state, {"a": 1}, tmp_path / "out.json")
    with pytest.raises(InputError, match="other settings"):
        jr.check_settings(state, {"a": 2}, tmp_path / "out.json")

    jr.write_annotations(tmp_path / "out.json", jr.annotations(state))
    assert len(json.loads((tmp_path / "out.json").read_text())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.json.journal"]  # no temp file left
