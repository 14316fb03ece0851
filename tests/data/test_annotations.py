"""The Open-Sora-Plan annotation format: data lists, JSON and JSONL, frame_idx, folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from osp_core.data.annotations import load_entries, read_annotation, read_data_list
from osp_core.errors import InputError


def test_data_list_of_json_and_jsonl(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    (tmp_path / "a.json").write_text(json.dumps([
        {"path": "x/1.mp4", "cap": ["first", "second"], "frame_idx": "4:20", "resolution": {"height": 720}},
        {"path": "2.mp4", "cap": "only"},
    ]))  # fmt: skip
    (tmp_path / "b.jsonl").write_text('{"path": "3.mp4", "cap": "three"}\n\n{"path": "/abs/4.png", "cap": null}\n')
    (tmp_path / "list.txt").write_text("media,a.json\n# a comment\n\nmedia,b.jsonl\n")
    entries = read_data_list(tmp_path / "list.txt")
    assert [e.path for e in entries] == [media / "x/1.mp4", media / "2.mp4", media / "3.mp4", Path("/abs/4.png")]
    assert entries[0].captions == ("first", "second") and (entries[0].start, entries[0].end) == (4, 20)
    assert entries[1].captions == ("only",) and (entries[1].start, entries[1].end) == (0, None)
    assert entries[3].captions == ("",) and entries[3].is_image


def test_annotation_alone_resolves_beside_itself(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"path": "v.mp4", "cap": "c", "frame_idx": ":9"}]))
    (entry,) = load_entries(tmp_path / "a.json")
    assert entry.path == tmp_path / "v.mp4" and (entry.start, entry.end) == (0, 9)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('[{"cap": "no path"}]', 'has no "path"'),
        ('[{"path": "a.mp4", "frame_idx": "9:3"}]', "bad frame_idx"),
        ('[{"path": "a.mp4", "frame_idx": "x:y"}]', "bad frame_idx"),
        ('{"path": "a.mp4"}', "does not hold a JSON list"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_annotations_name_the_problem(tmp_path, content, needle):
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(InputError, match=needle):
        read_annotation(path)


def test_bad_lists_and_empty_sources(tmp_path):
    (tmp_path / "list.txt").write_text("just-one-field\n")
    with pytest.raises(InputError, match="ROOT,ANNOTATION"):
        read_data_list(tmp_path / "list.txt")
    with pytest.raises(InputError, match="does not exist"):
        load_entries(tmp_path / "missing.txt")
    # the fix names every form the reader takes, not only a data list
    for folder, form in (("", "an annotation .json/.jsonl$"), ("videos", "or a folder of videos$"), ("captioned", "or a folder of videos with a NAME.txt caption")):
        with pytest.raises(InputError, match="ROOT,ANNOTATION") as refused:
            load_entries(tmp_path / "missing", folder=folder)
        assert refused.value.hint.startswith("pass a data list") and re.search(form, refused.value.hint), refused.value.hint
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InputError, match="no samples"):
        load_entries(tmp_path / "empty.json")
    with pytest.raises(InputError, match="is a folder"):
        load_entries(tmp_path)
