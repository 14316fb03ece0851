"""Small inputs for the edit tests: a textured square moving at a known speed."""

from __future__ import annotations

import numpy as np
import torch


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
