"""The shapes grader (`osp_core.eval.shapes`) on rendered clips whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from osp_core.data import shapes
from osp_core.eval.shapes import measure


@pytest.mark.parametrize("combo", [("red", "circle", "right"), ("green", "square", "up"), ("blue", "triangle", "down"), ("yellow", "triangle", "left"), ("white", "circle", "up")])
def test_measure_rendered_clips(combo):
    rng = np.random.default_rng(7)
    for _ in range(3):
        clip = shapes.sample_clip(rng, *combo)
        m = measure(shapes.render(clip))
        assert (m.color, m.shape, m.direction) == combo
        assert m.frames_with_shape == 17


def test_blank_and_static_videos():
    blank = measure(torch.zeros(17, 64, 64, 3, dtype=torch.uint8))
    assert (blank.color, blank.shape, blank.direction) == (None, None, None)
    rng = np.random.default_rng(0)
    still = shapes.render(shapes.sample_clip(rng, "red", "square", "right"))[:1].repeat(17, 1, 1, 1)
    m = measure(still)
    assert m.direction is None and m.color == "red" and m.shape == "square"


FIVE_SHAPES = shapes.make_world(["orange=235,150,40"], shapes=["circle,square,triangle,star,diamond"])


@pytest.mark.parametrize("combo", [("orange", "star", "right"), ("orange", "diamond", "up"), ("red", "triangle", "down"), ("blue", "diamond", "left"), ("white", "star", "down"), ("yellow", "square", "left"), ("green", "circle", "up")])
def test_the_judge_tells_new_colours_and_shapes_apart(combo):
    """A diamond and a triangle both fill half their box (the centroid tells them apart); a star
    is the one concave shape (solidity)."""
    rng = np.random.default_rng(11)
    for _ in range(2):
        clip = shapes.sample_clip(rng, *combo, world=FIVE_SHAPES)
        m = measure(shapes.render(clip), FIVE_SHAPES)
        assert (m.color, m.shape, m.direction) == combo


def test_the_default_judge_answers_only_the_default_world():
    """Without options the judge keeps to the five colours and three shapes: an orange shape
    reads as one of the five, a diamond (half its box, like a triangle) as a triangle."""
    rng = np.random.default_rng(3)
    diamond = measure(shapes.render(shapes.sample_clip(rng, "orange", "diamond", "up", world=FIVE_SHAPES)))
    assert diamond.color in shapes.COLORS and diamond.shape == "triangle"
    assert measure(shapes.render(shapes.sample_clip(rng, "orange", "diamond", "up", world=FIVE_SHAPES)), FIVE_SHAPES).shape == "diamond"


def test_the_default_world_is_judged_by_fill_ratio_alone():
    """On the default world the new features never change an answer: the judge's shape is the
    nearest fill ratio of the three, as before, whatever the solidity and centroid say."""
    from osp_core.eval.shapes import _nearest_shape

    rng = np.random.default_rng(0)
    for ratio, drop, solid in rng.uniform([0.2, -0.3, 0.3], [1.1, 0.3, 1.0], size=(500, 3)):
        assert _nearest_shape(ratio, drop, solid, shapes.WORLD) == min(shapes.SHAPES, key=lambda s: abs(shapes.fill_ratio(s) - ratio))
