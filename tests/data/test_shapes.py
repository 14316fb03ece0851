"""The synthetic shapes world: exactly the specified clips, captions and files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from osp_core.data import shapes
from osp_core.errors import InputError


def test_sixty_captions_and_parsing():
    captions = shapes.all_captions()
    assert len(captions) == len(set(captions)) == 60
    assert shapes.parse_caption("A red circle moving right ") == ("red", "circle", "right")
    with pytest.raises(InputError, match="shapes world"):
        shapes.parse_caption("a purple circle moving right")


@pytest.mark.parametrize("seed", range(3))
def test_clips_follow_the_spec(seed):
    rng = np.random.default_rng(seed)
    for color, shape, direction in [("red", "circle", "right"), ("blue", "square", "up"), ("white", "triangle", "left"), ("yellow", "circle", "down")]:
        clip = shapes.sample_clip(rng, color, shape, direction)
        assert 14 <= clip.size_px <= 20 and 1.5 <= clip.speed_px <= 2.5
        frames = shapes.render(clip)
        assert frames.shape == (17, 64, 64, 3) and frames.dtype == torch.uint8
        coverage = frames.float().amax(-1) / max(shapes.COLORS[color])
        # fully inside in every frame: the visible area never shrinks (a 1 px clip is > 5%)
        areas = coverage.sum(dim=(1, 2))
        assert torch.allclose(areas, areas[0].expand_as(areas), rtol=0.02)
        assert areas[0] / clip.size_px**2 == pytest.approx(shapes.fill_ratio(shape), rel=0.08)
        # solid interior color, black background
        interior = frames[0][coverage[0] > 0.999]
        assert (interior == torch.tensor(shapes.COLORS[color], dtype=torch.uint8)).all()
        # constant motion in the captioned direction
        ys, xs = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
        cy = (coverage * ys).sum(dim=(1, 2)) / areas
        cx = (coverage * xs).sum(dim=(1, 2)) / areas
        ey, ex = shapes.expected_displacement(clip)
        assert float(cy[-1] - cy[0]) == pytest.approx(ey, abs=0.3) and float(cx[-1] - cx[0]) == pytest.approx(ex, abs=0.3)
        steps = torch.stack([cy.diff(), cx.diff()]).abs().max(dim=0).values
        assert torch.allclose(steps, torch.full_like(steps, clip.speed_px), atol=0.15)


def test_every_caption_is_covered_in_sixty_clips():
    assert {c.caption for c in shapes.iter_clips(60, seed=0)} == set(shapes.all_captions())


def test_both_the_annotation_and_the_data_list_work_as_training_data(tmp_path):
    from osp_core.data.annotations import load_entries

    shapes.synthesize(tmp_path / "d", 3, seed=1)
    by_list = load_entries(tmp_path / "d" / "data.txt")
    by_annotation = load_entries(tmp_path / "d" / "annotations.json")
    assert [e.path.resolve() for e in by_list] == [e.path.resolve() for e in by_annotation]
    assert all(e.path.is_file() for e in by_annotation) and len(by_annotation) == 3


def test_the_wide_variety_draws_the_world_more_loosely():
    """`--variety wide` (a VAE's training data): wider sizes and speeds, jittered and pure-white
    colours, hard edges, paths past the frame's edges; the captions stay the world's."""
    wide = list(shapes.iter_clips(120, seed=5, variety="wide"))
    assert {c.caption for c in wide} == set(shapes.all_captions())
    sizes, speeds = np.array([c.size_px for c in wide]), np.array([c.speed_px for c in wide])
    assert 12 <= sizes.min() < 14 and 20 < sizes.max() <= 22 and 1.0 <= speeds.min() < 1.5 and 2.5 < speeds.max() <= 3.0
    past_edge = [c for c in wide if (shapes.boxes(c)[:, :2].min() < 0 or shapes.boxes(c)[:, 2:].max() > 64)]
    assert len(past_edge) > len(wide) // 4
    assert any(c.rgb == (255, 255, 255) for c in wide) and any(c.rgb not in (None, shapes.COLORS[c.color]) for c in wide)
    assert all(max(abs(a - b) for a, b in zip(c.rgb, shapes.COLORS[c.color])) <= 30 or c.rgb == (255, 255, 255) for c in wide)
    hard = next(c for c in wide if not c.antialias)
    soft = next(c for c in wide if c.antialias)
    hard_values = {tuple(v) for v in shapes.render(hard).reshape(-1, 3).tolist()}
    assert hard_values <= {(0, 0, 0), hard.rgb}  # one sample per pixel: no partial coverage
    assert len({tuple(v) for v in shapes.render(soft).reshape(-1, 3).tolist()}) > 2
    # the world itself is drawn as before
    assert all(c.rgb is None and c.antialias for c in shapes.iter_clips(8, seed=3))


def test_the_hues_variety_draws_the_wide_way_in_any_colour():
    """`--variety hues`: the wide variety's sizes, edges and paths, colours anywhere on the hue
    circle (between the world's five too), each caption naming the world's nearest colour."""
    import colorsys
    import math

    hues = list(shapes.iter_clips(200, seed=5, variety="hues"))
    assert 12 <= min(c.size_px for c in hues) < 14 and any(not c.antialias for c in hues) and any(c.antialias for c in hues)
    hsv = np.array([colorsys.rgb_to_hsv(*(v / 255 for v in c.rgb)) for c in hues])
    assert np.histogram(hsv[:, 0], bins=6, range=(0, 1))[0].min() >= 15  # every sixth of the hue circle
    assert 0.38 <= hsv[:, 1].min() and hsv[:, 1].max() <= 1.0 and 0.58 <= hsv[:, 2].min()
    assert any(100 <= c.rgb[1] <= 170 and c.rgb[0] > 200 and c.rgb[2] < 90 for c in hues)  # oranges, which the world lacks
    for c in hues:
        assert c.color == min(shapes.COLORS, key=lambda name: math.dist(shapes.COLORS[name], c.rgb))
    hard = next(c for c in hues if not c.antialias)
    assert {tuple(v) for v in shapes.render(hard).reshape(-1, 3).tolist()} == {(0, 0, 0), hard.rgb}


def test_the_default_world_draws_todays_clips_byte_for_byte(tmp_path):
    """No options, or options naming the default world, draw exactly the clips drawn before
    colours and shapes became options (hashes taken from that code, seed 3)."""
    default = shapes.make_world(only_colors=["white,yellow", "blue", "green", "red"], shapes=["triangle", "square,circle"])
    assert default == shapes.WORLD and shapes.make_world() == shapes.WORLD
    shapes.synthesize(tmp_path / "d", 6, seed=3, world=default)
    assert hashlib.sha256((tmp_path / "d" / "annotations.json").read_bytes()).hexdigest() == "e47079d6b51948b6e9538716d353a3153d2065555def8110c28edbfb263c4986"
    frames = hashlib.sha256()
    for clip in shapes.iter_clips(6, 3):
        frames.update(shapes.render(clip).numpy().tobytes())
    assert frames.hexdigest() == "29a546c6be99fd5baf8303060415511a9d868c1e9dd55963829796aa702984cf"


def test_added_colours_and_new_shapes():
    world = shapes.make_world(["orange=235,150,40"], ["orange,blue"], ["star", "diamond"])
    assert dict(world.colors) == {"blue": shapes.COLORS["blue"], "orange": (235, 150, 40)} and world.shapes == ("star", "diamond")
    captions = shapes.all_captions(world)
    assert len(captions) == 16 and "a orange star moving up" in captions
    assert shapes.parse_caption("a orange diamond moving left", world) == ("orange", "diamond", "left")
    with pytest.raises(InputError, match="shapes world"):
        shapes.parse_caption("a orange diamond moving left")  # not in the default world
    clips = list(shapes.iter_clips(16, seed=0, world=world))
    assert {c.caption for c in clips} == set(captions)
    assert {c.rgb for c in clips} == {None, (235, 150, 40)}  # an added colour travels with its clip
    rng = np.random.default_rng(1)
    for shape in ("star", "diamond"):
        clip = shapes.sample_clip(rng, "orange", shape, "right", world=world)
        frames = shapes.render(clip)
        coverage = frames.float().amax(-1) / 235
        areas = coverage.sum(dim=(1, 2))
        assert areas[0] / clip.size_px**2 == pytest.approx(shapes.fill_ratio(shape), rel=0.08)
        assert torch.allclose(areas, areas[0].expand_as(areas), rtol=0.05)  # 4x4 samples a pixel: diagonal edges alias a little
        assert (frames[0][coverage[0] > 0.999] == torch.tensor([235, 150, 40], dtype=torch.uint8)).all()
        ys, xs = torch.nonzero(coverage[0] > 0.5, as_tuple=True)
        x0, y0, x1, y1 = shapes.boxes(clip)[0]
        assert x0 - 1 <= xs.min() and xs.max() <= x1 and y0 - 1 <= ys.min() and ys.max() <= y1  # inside its box


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"add_colors": ["red=1,2,3"]}, "built-in colour"),
        ({"add_colors": ["teal=0,128,128", "teal=0,130,128"]}, "given twice"),
        ({"add_colors": ["teal=0,128,300"]}, "0 to 255"),
        ({"add_colors": ["teal=0,128"]}, "NAME=R,G,B"),
        ({"add_colors": ["teal"]}, "NAME=R,G,B"),
        ({"add_colors": ["navy=0,0,40"]}, "too dark"),
        ({"add_colors": ["scarlet=235,45,40"]}, "too close to 'red'"),
        ({"add_colors": ["star=100,100,200"]}, "word of the captions"),
        ({"only_colors": ["red,pink"]}, "unknown colour 'pink'"),
        ({"shapes": ["star,hexagon"]}, "unknown shape 'hexagon'"),
    ],
)
def test_bad_world_options(options, needle):
    with pytest.raises(InputError, match=needle):
        shapes.make_world(**options)
