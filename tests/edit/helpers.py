"""Small inputs for the edit tests: a textured square moving at a known speed, and the `inputs`
fixture (videos, frames, masks and tracks made from it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from osp_core.io import write_video


def moving_square(frames: int = 9, size: int = 32, start: tuple[int, int] = (6, 10), velocity: tuple[int, int] = (2, 1), side: int = 8) -> torch.Tensor:
    """(T, size, size, 3) uint8: a checkered square whose top-left corner starts at `start`
    (x, y) and moves `velocity` (dx, dy) pixels per frame, on a dark gradient."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((frames, size, size, 3))
    for t in range(frames):
        x0, y0 = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        u, v = xx - x0, yy - y0
        inside = (u >= 0) & (u < side) & (v >= 0) & (v < side)
        checker = ((np.floor(u / 2) + np.floor(v / 2)) % 2) * 0.6 + 0.4
        out[t, ..., 0] = 20 + xx
        out[t, ..., 1] = 20 + yy
        out[t, ..., 2] = 30
        out[t][inside] = (checker[inside][:, None] * np.array([230, 200, 60]))
    return torch.from_numpy(out.round().clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-inputs")
    write_video(folder / "in.mp4", moving_square(frames=9), fps=8)
    write_video(folder / "ten.mp4", moving_square(frames=10), fps=8)
    Image.fromarray(moving_square(frames=1)[0].numpy()).save(folder / "first.png")
    Image.fromarray(moving_square(frames=1, size=48)[0, :32].numpy()).save(folder / "first-wide.png")
    Image.new("L", (32, 32), 0).save(folder / "empty-mask.png")
    Image.new("L", (16, 32), 255).save(folder / "small-mask.png")
    (folder / "short-track.json").write_text(json.dumps([[[5, 5]] * 8]))
    (folder / "nan-track.json").write_text("[[[NaN, 5]" + ", [5, 5]" * 8 + "]]")  # Python's json reads NaN
    # not square, so a size written width-first reads wrong: 32 high, 48 wide; 60 high, 64 wide
    write_video(folder / "wide.mp4", moving_square(frames=9, size=48)[:, :32], fps=8)
    write_video(folder / "odd.mp4", moving_square(frames=9, size=64)[:, :60], fps=8)
    return folder
