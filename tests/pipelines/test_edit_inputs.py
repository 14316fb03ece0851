"""The inputs of `osp edit` in pixels: regions, feathering, tracks and the tracker."""

from __future__ import annotations

import json

import pytest
import torch

from osp_core.errors import InputError
from osp_core.pipelines import edit_inputs as ei
from osp_core.pipelines.tracking import track_region
from tests.clips import moving_square


def test_box_parsing_and_bounds():
    assert ei.parse_box("1, 2,30,31") == (1, 2, 30, 31)
    with pytest.raises(InputError, match="four integers"):
        ei.parse_box("1,2,3")
    assert ei.check_box((0, 0, 32, 16), 16, 32) == (0, 0, 32, 16)
    with pytest.raises(InputError, match="empty"):
        ei.check_box((4, 4, 4, 9), 32, 32)
    with pytest.raises(InputError, match="outside"):
        ei.check_box((0, 0, 33, 8), 32, 32)
    mask = ei.box_mask((2, 3, 5, 7), 5, 8, 8)
    assert mask.shape == (5, 8, 8) and int(mask[0].sum()) == 3 * 4 and bool(mask[:, 3:7, 2:5].all())


def test_latent_mask_covers_every_pixel_it_stands_for():
    mask = torch.zeros(9, 32, 32)
    mask[5, 17, 3] = 1  # pixel frame 5 -> latent frame 2 (covers 5..8), cell (2, 0)
    lat = ei.latent_mask(mask, 4, 8)
    assert lat.shape == (3, 4, 4)
    assert lat.sum() == 1 and lat[2, 2, 0] == 1


def test_feathering_is_zero_outside_and_one_deep_inside():
    mask = ei.box_mask((4, 4, 28, 28), 1, 32, 32)
    soft = ei.feathered(mask, 2)
    assert bool((soft[mask == 0] == 0).all())
    assert bool((soft[0, 6:26, 6:26] == 1).all())
    assert 0 < float(soft[0, 4, 10]) < 1


def test_tracks_linear_file_and_bounds(tmp_path):
    track = ei.parse_track("0,10:8,2", 5)
    assert track.tolist() == [[0, 10], [2, 8], [4, 6], [6, 4], [8, 2]]
    with pytest.raises(InputError, match="X0,Y0:X1,Y1"):
        ei.parse_track("0,10-8,2", 5)
    path = tmp_path / "t.json"
    path.write_text(json.dumps([[[1, 1]] * 4]))
    with pytest.raises(InputError, match="4 points, the edit 5 frames"):
        ei.load_track_file(path, 5)
    path.write_text("not json")
    with pytest.raises(InputError, match="not a JSON list"):
        ei.load_track_file(path, 5)
    with pytest.raises(InputError, match=r"\(32, 3\) at frame 0 is outside"):
        ei.check_tracks([torch.tensor([[32.0, 3.0]])], 32, 32)


def test_region_displacement_uses_tracks_starting_in_the_region():
    mask0 = torch.zeros(16, 16)
    mask0[:8, :8] = 1
    inside = torch.tensor([[2.0, 2.0], [4.0, 3.0]])
    outside = torch.tensor([[12.0, 12.0], [2.0, 12.0]])
    assert ei.region_displacement([inside, outside], mask0).tolist() == [[0, 0], [2, 1]]


def test_lucas_kanade_follows_known_motion():
    frames = moving_square(frames=9, velocity=(2, 1))
    mask = torch.zeros(32, 32)
    mask[8:20, 4:16] = 1  # around the square in frame 0 (x 6..13, y 10..17)
    tracks = track_region(frames, mask)
    assert len(tracks) >= 2
    motion = torch.stack([t - t[0] for t in tracks]).mean(dim=0)  # (T, 2)
    expected = torch.tensor([[2.0 * i, 1.0 * i] for i in range(9)])
    assert torch.allclose(motion, expected, atol=0.5), motion


def test_lucas_kanade_on_a_flat_region_finds_nothing():
    frames = torch.zeros(5, 32, 32, 3, dtype=torch.uint8)
    assert track_region(frames, torch.ones(32, 32)) == []


def test_mask_image_and_mask_video(tmp_path):
    from PIL import Image

    from osp_core.io import write_video

    image = torch.zeros(32, 32, 3, dtype=torch.uint8)
    image[4:12, 8:20] = 255
    Image.fromarray(image.numpy()).save(tmp_path / "m.png")
    mask = ei.load_mask(tmp_path / "m.png", 5, 32, 32)
    assert mask.shape == (5, 32, 32) and int(mask[3].sum()) == 8 * 12 and bool(mask[:, 4:12, 8:20].all())
    frames = torch.zeros(9, 32, 32, 3, dtype=torch.uint8)
    for t in range(9):
        frames[t, 8:24, 2 * t : 2 * t + 8] = 255  # a region moving right
    write_video(tmp_path / "m.mp4", frames, fps=8)
    moving = ei.load_mask(tmp_path / "m.mp4", 9, 32, 32)
    assert moving.shape == (9, 32, 32) and bool(moving[0, 16, 3]) and not bool(moving[8, 16, 3]) and bool(moving[8, 16, 19])
    with pytest.raises(InputError, match="9 frames, the edit 13"):
        ei.load_mask(tmp_path / "m.mp4", 13, 32, 32)


def test_missing_mask_and_first_frame_are_named_as_such(tmp_path):
    with pytest.raises(InputError, match="^mask '.*' does not exist"):
        ei.load_mask(tmp_path / "missing.png", 9, 64, 64)
    with pytest.raises(InputError, match="^first frame '.*' does not exist"):
        ei.load_first_frame(tmp_path / "missing.png", 64, 64)


@pytest.mark.parametrize("text", ["20,32:inf,32", "nan,1:2,3"])
def test_non_finite_track_points_are_malformed(text):
    with pytest.raises(InputError, match="is not X0,Y0:X1,Y1"):
        ei.parse_track(text, 9)
