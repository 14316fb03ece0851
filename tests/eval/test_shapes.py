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
