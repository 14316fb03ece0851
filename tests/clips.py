"""Generated clips shared by several test folders (each built once per session or module).

Edit inputs: a textured square moving at a known speed (`moving_square`) and the `inputs` fixture
(videos, frames, masks and tracks made from it). Caption clips: moving, panning, static and long
clips of SIZE at FPS (`clips_dir`). Test modules and conftests import the fixtures by name."""

from __future__ import annotations

import json
from pathlib import Path

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


# Caption clips

FPS = 8
SIZE = (48, 64)  # height, width


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random background (smooth so H.264 keeps it stable frame to frame)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    big = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))
    return big.astype(np.uint8)


def static_clip(frames: int = 24, seed: int = 0) -> torch.Tensor:
    h, w = SIZE
    bg = _texture(h, w, seed)[:h, :w]
    return torch.from_numpy(np.repeat(bg[None], frames, axis=0))


def moving_square_clip(frames: int = 24, seed: int = 1) -> torch.Tensor:
    """A bright square crossing a static background, 2 px per frame."""
    h, w = SIZE
    video = static_clip(frames, seed).clone()
    for i in range(frames):
        x = (2 * i) % (w - 14)
        video[i, 16:30, x : x + 14] = torch.tensor([250, 250, 40], dtype=torch.uint8)
    return video


def panning_clip(frames: int = 24, seed: int = 2) -> torch.Tensor:
    """A camera pan: the background slides 2 px per frame."""
    h, w = SIZE
    bg = _texture(h, w + 2 * frames + 16, seed)[:h]
    return torch.from_numpy(np.stack([bg[:, 2 * i : 2 * i + w] for i in range(frames)]))


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory) -> Path:
    """moving.mp4, sub/pan.mp4, static.mp4 (24 frames each, 8 fps) and long.mp4 (40 moving frames)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "sub").mkdir()
    write_video(root / "moving.mp4", moving_square_clip(), fps=FPS)
    write_video(root / "sub" / "pan.mp4", panning_clip(), fps=FPS)
    write_video(root / "static.mp4", static_clip(), fps=FPS)
    write_video(root / "long.mp4", moving_square_clip(40, seed=3), fps=FPS)
    return root
