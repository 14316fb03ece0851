"""Frames x height x width buckets: the spec, each clip's bucket (from the annotation's
num_frames/resolution/fps before the file), the captioned folder, and a batch sampler that
keeps one bucket per micro-batch on any rank count and after a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osp_core.data.annotations import Entry, load_entries, read_annotation
from osp_core.data.buckets import Bucket, parse_buckets, plan_clips
from osp_core.data.datasets import GlobalBatchSampler
from osp_core.errors import InputError
from osp_core.io.probe import MediaInfo
from tests.train.helpers import sampler_stream

LARGEST = (17, 64, 64)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("17x64", "cannot read bucket '17x64'"),
        ("17x64x64,,9x48x64", "cannot read bucket ''"),
        ("18x64x64", r"18 frames is not 4k\+1"),
        ("17x60x64", "60x64 is not a multiple of 16"),
        ("21x64x64", "larger than --frames 17 / --size 64x64"),
        ("17x64x80", "larger than"),
        ("0x64x64", r"not 4k\+1"),
    ],
)
def test_impossible_bucket_specs_name_the_problem(spec, needle):
    with pytest.raises(InputError, match=needle):
        parse_buckets(spec, LARGEST, grid=16)


def test_bucket_list_is_sorted_and_merged():
    assert parse_buckets(" 9x48x64,17x64x64,9x48x64 ", LARGEST, 16) == [Bucket(17, 64, 64), Bucket(9, 48, 64)]
    assert parse_buckets("auto", LARGEST, 16) == parse_buckets("", LARGEST, 16) == []


def _entry(name: str, **fields) -> Entry:
    return Entry(Path(f"/data/{name}.mp4"), ("c",), **fields)


def _probe_of(infos: dict[str, MediaInfo], calls: list[str]):
    def probe(path: Path) -> MediaInfo:
        calls.append(path.stem)
        if path.stem not in infos:
            raise InputError(f"cannot read '{path}'", "check the file")
        return infos[path.stem]

    return probe


def test_auto_buckets_keep_aspect_never_upscale_and_report_what_fits_none():
    infos = {
        "wide": MediaInfo(40, 30.0, 72, 128),  # 16:9, 40 frames
        "tall": MediaInfo(12, 30.0, 128, 72),
        "small": MediaInfo(30, 30.0, 32, 48),  # smaller than 64x64: kept small
        "tiny": MediaInfo(30, 30.0, 8, 8),  # below the 16-pixel grid
    }
    calls: list[str] = []
    entries = [_entry(name) for name in [*infos, "broken"]]
    plan = plan_clips(entries, "auto", LARGEST, 1, 16, probe=_probe_of(infos, calls))
    assert sorted(calls) == sorted([*infos, "broken"])  # one header read per file
    assert plan.kept == [0, 1, 2]
    assert [bucket for _, bucket in plan.shapes] == [Bucket(17, 32, 64), Bucket(9, 64, 32), Bucket(17, 32, 48)]
    assert [path for path, _ in plan.left_out] == ["/data/tiny.mp4", "/data/broken.mp4"]
    assert "fits no bucket without upscaling" in plan.left_out[0][1] and "cannot read" in plan.left_out[1][1]
    assert plan.counts() == {"17x32x64": 1, "17x32x48": 1, "9x64x32": 1}
    upscaled = plan_clips(entries[:3], "auto", LARGEST, 1, 16, upscale=True, probe=_probe_of(infos, []))
    assert [bucket for _, bucket in upscaled.shapes][2] == Bucket(17, 32, 64)  # 32x48 scaled up to fit 64 wide


def test_listed_buckets_take_the_nearest_aspect_the_clip_fills():
    infos = {"square": MediaInfo(20, 8.0, 64, 64), "short": MediaInfo(10, 8.0, 64, 64), "wide": MediaInfo(20, 8.0, 48, 96), "small": MediaInfo(20, 8.0, 40, 40)}
    plan = plan_clips([_entry(n) for n in infos], "17x64x64,9x64x64,17x48x64", LARGEST, 1, 16, probe=_probe_of(infos, []))
    assert [str(b) for _, b in plan.shapes] == ["17x64x64", "9x64x64", "17x48x64"]
    assert [p for p, _ in plan.left_out] == ["/data/small.mp4"]  # 40x40 fills none without upscaling
    upscaled = plan_clips([_entry("small")], "17x64x64,17x48x64", LARGEST, 1, 16, upscale=True, probe=_probe_of(infos, []))
    assert [str(b) for _, b in upscaled.shapes] == ["17x64x64"]


def test_annotation_fields_are_used_instead_of_the_file(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([
        {"path": "a.mp4", "cap": "a", "num_frames": 40, "resolution": {"height": 72, "width": 128}, "fps": 24},
        {"path": "b.mp4", "cap": "b", "frame_idx": "0:12", "resolution": {"height": 64, "width": 64}, "fps": 8.0},
        {"path": "c.mp4", "cap": "c", "resolution": {"height": 64}},  # half a resolution: the file says
    ]))  # fmt: skip
    entries = read_annotation(tmp_path / "a.json")
    assert (entries[0].num_frames, entries[0].size, entries[0].fps) == (40, (72, 128), 24.0)
    assert entries[2].size is None
    calls: list[str] = []
    plan = plan_clips(entries, "auto", LARGEST, 1, 16, target_fps=8, probe=_probe_of({"c": MediaInfo(5, 8.0, 48, 64)}, calls))
    assert calls == ["c"]  # a and b are never opened
    # a: 24 fps to 8 fps is stride 3, 40 frames give 14 -> 13; b: 12 frames at stride 1 -> 9
    assert [(stride, str(b)) for stride, b in plan.shapes] == [(3, "13x32x64"), (1, "9x64x64"), (1, "5x48x64")]


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"num_frames": 0}, "bad num_frames 0"),
        ({"num_frames": 4.5}, "bad num_frames"),
        ({"fps": "fast"}, "bad fps 'fast'"),
        ({"num_frames": "17"}, "bad num_frames '17' in .*a.json"),  # a string, even of a number
        ({"num_frames": True}, "bad num_frames True"),
        ({"fps": "24"}, "bad fps '24'"),
        ({"resolution": {"height": "64", "width": 64}}, "bad height '64'"),
        ({"resolution": {"height": 64, "width": False}}, "bad width False"),
        ({"resolution": {"height": -4, "width": 8}}, "bad height -4"),
        ({"resolution": "720p"}, "bad resolution '720p'"),
    ],
)
def test_bad_annotation_fields_are_one_line(tmp_path, record, needle):
    (tmp_path / "a.json").write_text(json.dumps([{"path": "a.mp4", "cap": "a", **record}]))
    with pytest.raises(InputError, match=needle):
        read_annotation(tmp_path / "a.json")


def test_captioned_folder_reads_txt_beside_each_video(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("one.mp4", "sub/two.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "one.txt").write_text("a red ball\n\nbouncing\n")
    (tmp_path / "sub" / "two.txt").write_text("")
    entries = load_entries(tmp_path, folder="captioned")
    assert [(e.path.name, e.captions) for e in entries] == [("one.mp4", ("a red ball", "bouncing")), ("two.mp4", ("",))]
    (tmp_path / "three.mp4").write_bytes(b"")
    with pytest.raises(InputError, match="three.mp4' has no caption file 'three.txt'"):
        load_entries(tmp_path, folder="captioned")
    with pytest.raises(InputError, match="is a folder"):
        load_entries(tmp_path)


def test_bucketed_sampler_is_one_bucket_per_micro_batch_on_any_rank_count_and_resume():
    groups = [0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 0]  # 6, 3 and 2 items

    def stream(ranks: int, accumulation: int, start: int = 0, steps: int = 6) -> list[list[tuple[int, int]]]:
        samplers = [GlobalBatchSampler(len(groups), 2, accumulation, ranks, rank, seed=5, start=start, groups=groups) for rank in range(ranks)]
        out, micro_batches = sampler_stream(samplers, start, steps)
        assert all(len({groups[i] for _, i in batch}) == 1 for batch in micro_batches), micro_batches  # one bucket each
        return out

    one = stream(1, 2)
    assert stream(2, 1) == one
    assert stream(2, 1, start=8, steps=4) == one[2:]  # resumed after 2 steps on another rank count
    # an epoch (3 + 2 + 1 chunks of 2 = 12 positions) holds every item; the 3-item bucket fills its last chunk
    epoch = [i for step in one for e, i in step if e == 0]
    assert len(epoch) == 12 and set(epoch) == set(range(len(groups)))
    assert GlobalBatchSampler(len(groups), 2, groups=groups, seed=6)._order(0) != GlobalBatchSampler(len(groups), 2, groups=groups, seed=5)._order(0)
