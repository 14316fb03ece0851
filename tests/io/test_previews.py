"""Previews of a finished video: the thumbnail (first frame) and the spritesheet (a grid of
frames spread over the clip), read back from the PNGs written."""

from __future__ import annotations

import pytest
import torch

from osp_core.errors import InputError
from osp_core.io import read_video, write_image, write_previews, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 17x64x64 mp4 whose frames differ (each frame's index in its red channel), and the frames sent."""
    from osp_core.data.shapes import iter_clips, render

    frames = render(next(iter_clips(1, 0)))
    frames[..., 0] = (torch.arange(17) * 15).to(torch.uint8)[:, None, None]
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8)
    return path, frames


def _cell(sheet, row, column, size=64):
    return sheet[row * size : (row + 1) * size, column * size : (column + 1) * size]


def test_sixteen_frames_of_seventeen_tile_four_by_four(clip, tmp_path):
    path, sent = clip
    previews = write_previews(path, tmp_path / "thumb.png", tmp_path / "sprites.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sprites.png", "thumb.png"]  # no temp file left
    thumb, sheet = read_video(tmp_path / "thumb.png").frames, read_video(tmp_path / "sprites.png").frames[0]
    decoded = read_video(path).frames
    assert thumb.shape == (1, 64, 64, 3) and sheet.shape == (256, 256, 3)
    assert torch.equal(thumb[0], decoded[0])  # PNG is lossless: the mp4's first frame as decoded
    assert (thumb[0].int() - sent[0].int()).abs().float().mean() < 3  # and the frame sent, up to H.264
    assert previews.frames[0] == 0 and previews.frames[-1] == 16 and len(previews.frames) == 16  # first and last included
    assert (previews.columns, previews.rows, previews.cell) == (4, 4, (64, 64))
    for cell, index in enumerate(previews.frames):
        assert torch.equal(_cell(sheet, *divmod(cell, 4)), decoded[index]), cell


def test_every_frame_of_seventeen_tiles_five_columns_by_four_rows(clip, tmp_path):
    path, _ = clip
    previews = write_previews(path, tmp_path / "thumb.png", tmp_path / "sprites.png", max_frames=32)
    sheet = read_video(tmp_path / "sprites.png").frames[0]
    assert sheet.shape == (4 * 64, 5 * 64, 3) and (previews.columns, previews.rows) == (5, 4)
    assert previews.frames == list(range(17))
    decoded = read_video(path).frames
    assert torch.equal(_cell(sheet, 3, 1), decoded[16])
    assert not _cell(sheet, 3, 2).any() and not _cell(sheet, 3, 4).any()  # the three cells after the last frame are black


def test_a_one_frame_image_is_its_own_thumbnail_and_spritesheet(tmp_path):
    image = torch.randint(0, 256, (48, 32, 3), dtype=torch.uint8)
    write_image(tmp_path / "one.png", image)
    previews = write_previews(tmp_path / "one.png", tmp_path / "t.png", tmp_path / "s.png")
    assert previews.frames == [0] and (previews.columns, previews.rows, previews.cell) == (1, 1, (48, 32))
    assert torch.equal(read_video(tmp_path / "t.png").frames[0], image)
    assert torch.equal(read_video(tmp_path / "s.png").frames[0], image)


def test_refusals_write_nothing(clip, tmp_path):
    path, _ = clip
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "not-a-video.mp4").write_bytes(b"not a video")
    for video, kwargs in [(tmp_path / "not-a-video.mp4", {}), (path, {"max_frames": 0}), (path, {"spritesheet": out / "s.jpg"})]:
        with pytest.raises(InputError):
            write_previews(video, **{"thumbnail": out / "t.png", "spritesheet": out / "s.png", **kwargs})
        assert list(out.iterdir()) == [], (video, kwargs)
