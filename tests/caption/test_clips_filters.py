"""Splitting, probing, single-pass decoding, the motion score, the filters and the English check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osp_core.caption import filters as flt
from osp_core.caption.clips import Clip, split, uniform_indices
from osp_core.caption.decode import caption_size, decode_clips
from osp_core.caption.filters import FilterConfig, metadata_drop_reason, motion_drop_reason
from osp_core.caption.language import is_english
from osp_core.caption.motion import motion_indices, motion_score, motion_size
from osp_core.io.probe import MediaInfo, probe
from osp_core.errors import InputError
from osp_core.io import read_video

from tests.clips import FPS, SIZE


def test_split_windows_and_tails():
    assert split(40, None) == [(0, 40)]
    assert split(40, 8) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    assert split(20, 8) == [(0, 8), (8, 16)]  # the 4-frame tail is not a clip
    assert split(20, 8, 4) == [(0, 8), (4, 12), (8, 16), (12, 20)]
    assert split(5, 8) == [(0, 5)]  # shorter than one clip: kept whole, filtered as too short
    with pytest.raises(InputError, match="clip-frames"):
        split(10, 0)
    with pytest.raises(InputError, match="clip-stride"):
        split(10, 4, 0)


def test_uniform_indices_cover_the_clip():
    idx = uniform_indices(10, 50, 5)
    assert idx[0] == 10 and idx[-1] == 49 and len(idx) == 5 and idx == sorted(idx)
    assert uniform_indices(0, 3, 8) == [0, 1, 2]


def test_probe_reads_metadata(clips_dir):
    info = probe(clips_dir / "long.mp4")
    assert info == MediaInfo(40, float(FPS), *SIZE)
    assert info.duration == pytest.approx(5.0)
    bad = clips_dir.parent / "probe_bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="cannot read"):
        probe(bad)
    with pytest.raises(InputError, match="does not exist"):
        probe(clips_dir / "nope.mp4")


def test_one_decoding_pass_serves_overlapping_clips(clips_dir):
    path = clips_dir / "long.mp4"
    info = probe(path)
    clips = [Clip(path, "long.mp4", s, e, info) for s, e in split(info.num_frames, 16, 8)]
    reference = read_video(path).frames.numpy()
    got = dict(decode_clips(path, clips, num_frames=4, frame_size=1000, with_motion=True))
    assert set(got) == set(clips)
    for clip, frames in got.items():
        assert not isinstance(frames, str), frames
        expected = [reference[i] for i in uniform_indices(clip.start, clip.end, 4)]
        assert len(frames.frames) == 4
        for a, b in zip(frames.frames, expected, strict=True):
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0  # same frames (RGB conversion may differ by a level)
        assert frames.gray.shape == (len(motion_indices(clip.start, clip.end, info.fps)), *motion_size(*SIZE))


def test_decode_reports_clips_past_the_end(clips_dir):
    path = clips_dir / "moving.mp4"
    real = probe(path)
    lying = MediaInfo(real.num_frames + 10, real.fps, real.height, real.width)  # metadata that overstates the length
    clips = [Clip(path, "moving.mp4", 0, 16, lying), Clip(path, "moving.mp4", 16, 34, lying)]
    results = dict(decode_clips(path, clips, 4, 448, with_motion=False))
    assert not isinstance(results[clips[0]], str)
    assert results[clips[0]].gray is None
    assert "ends at frame 24" in results[clips[1]]


def test_caption_frames_are_scaled_down_not_up():
    assert caption_size(1080, 1920, 448) == (252, 448)
    assert caption_size(48, 64, 448) == (48, 64)


def test_motion_score_separates_static_moving_and_panning(clips_dir):
    scores = {}
    for name in ("static.mp4", "moving.mp4", "sub/pan.mp4"):
        path = clips_dir / name
        info = probe(path)
        [(clip, frames)] = decode_clips(path, [Clip(path, name, 0, info.num_frames, info)], 8, 448, with_motion=True)
        scores[name] = motion_score(frames.gray)
    assert scores["static.mp4"] < 0.5
    assert scores["moving.mp4"] > 2.0
    assert scores["sub/pan.mp4"] > scores["moving.mp4"]  # the whole frame moves in a pan
    assert motion_drop_reason(scores["static.mp4"], FilterConfig()) == flt.STATIC
    assert motion_drop_reason(scores["moving.mp4"], FilterConfig()) is None
    assert motion_drop_reason(scores["static.mp4"], FilterConfig(min_motion=0)) is None


def test_motion_score_math_and_sampling():
    still = np.full((5, 8, 8), 100, dtype=np.uint8)
    assert motion_score(still) == 0.0
    flicker = still.copy()
    flicker[1::2] = 110
    assert motion_score(flicker) == pytest.approx(10.0)
    assert motion_score(still[:1]) == 0.0
    assert motion_indices(0, 48, fps=24) == list(range(0, 48, 6))  # 1/4 s apart
    assert len(motion_indices(0, 10_000, fps=30)) <= 64  # long clips widen the step


def test_clips_shorter_than_a_motion_step_compare_first_and_last_frame(clips_dir):
    assert motion_indices(0, 2, fps=8) == [0, 1]  # the step is 2 frames at 8 fps
    assert motion_indices(10, 13, fps=24) == [10, 12]  # the step is 6 frames at 24 fps
    assert motion_indices(0, 1, fps=8) == [0]  # one frame: nothing to compare
    scores = {}
    for name in ("static.mp4", "moving.mp4"):
        path = clips_dir / name
        info = probe(path)
        clips = [Clip(path, name, s, s + 2, info) for s in range(0, info.num_frames, 2)]
        results = list(decode_clips(path, clips, 2, 448, with_motion=True))
        assert len(results) == 12 and all(frames.gray.shape[0] == 2 for _, frames in results)
        scores[name] = [motion_score(frames.gray) for _, frames in results]
    # a square moving 2 px per frame is not static, even over one frame's gap; a still scene is
    assert all(motion_drop_reason(s, FilterConfig()) is None for s in scores["moving.mp4"]), scores
    assert all(motion_drop_reason(s, FilterConfig()) == flt.STATIC for s in scores["static.mp4"]), scores


def test_single_frame_clips_are_too_short_for_the_motion_filter():
    one = Clip(Path("x.mp4"), "x.mp4", 5, 6, MediaInfo(48, 24.0, 480, 640))
    assert metadata_drop_reason(one, FilterConfig()) == flt.TOO_SHORT
    assert metadata_drop_reason(one, FilterConfig(min_motion=0)) is None  # no motion filter, no need


def _clip(num_frames=48, fps=24.0, height=480, width=640, image=False):
    return Clip(Path("x.mp4"), "x.mp4", 0, num_frames, MediaInfo(num_frames, fps, height, width), is_image=image)


def test_metadata_filters_name_their_reason():
    cfg = FilterConfig(min_duration=1.0, max_duration=10.0, min_height=256, min_width=256, min_aspect=0.5, max_aspect=2.0)
    assert metadata_drop_reason(_clip(), cfg) is None
    assert metadata_drop_reason(_clip(num_frames=12), cfg) == flt.TOO_SHORT
    assert metadata_drop_reason(_clip(num_frames=24 * 11), cfg) == flt.TOO_LONG
    assert metadata_drop_reason(_clip(height=200), cfg) == flt.LOW_RESOLUTION
    assert metadata_drop_reason(_clip(height=256, width=1024), cfg) == flt.ASPECT_RATIO
    assert metadata_drop_reason(_clip(num_frames=40), FilterConfig(), clip_frames=65) == flt.TOO_SHORT
    # images have no duration
    assert metadata_drop_reason(_clip(num_frames=1, fps=0.0, image=True), cfg) is None


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"min_duration": -1}, "min-duration"),
        ({"min_motion": float("nan")}, "min-motion"),
        ({"max_duration": 0}, "max-duration"),
        ({"min_duration": 5, "max_duration": 2}, "max-duration"),
        ({"min_aspect": 2, "max_aspect": 1}, "max-aspect"),
    ],
)
def test_filter_config_rejects_bad_thresholds(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        FilterConfig(**kwargs).validate()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A red car drives along a coastal road while the camera pans left.", True),
        ("Close-up of a cat", True),
        ("一只猫坐在窗台上，镜头缓慢推进。", False),
        ("Кошка сидит на подоконнике", False),
        ("Un coche rojo conduce por una carretera costera mientras la cámara gira despacio", False),
        # accented Latin letters and keyword-style captions are English (QA issue 6)
        ("The café in São Paulo serves crème brûlée.", True),
        ("Aerial drone footage: snowy mountains, pine forests, winding river, golden hour lighting", True),
        ("Timelapse, city skyline, neon lights, rain, slow motion, 4K", True),
        ("The Rio de la Plata flows past Buenos Aires at dusk", True),
        ("Los Angeles and Las Vegas at night, aerial view", True),
        ("A shop sign reading 欢迎光临 above the door of a small bakery", True),
        ("A white van parks outside, filmed at 30 frames per second", True),
        ("Ein roter Wagen fährt langsam die Küstenstraße entlang, während die Kamera nach links schwenkt.", False),
        ("Un chat est assis sur le rebord de la fenêtre pendant que la caméra avance lentement.", False),
        ("Un gatto è seduto sul davanzale mentre la telecamera si avvicina lentamente.", False),
        ("Рыжий кот спит на диване, камера медленно приближается.", False),
        ("", False),
        ("12345 !!!", False),
    ],
)
def test_is_english(text, expected):
    assert is_english(text) is expected
