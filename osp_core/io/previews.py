"""Previews of a finished video: a thumbnail (its first frame) and a spritesheet (a grid of
frames taken evenly over the clip), both PNG, for the video API's content routes and the page.

`sprite_grid` works on frames in memory; `write_previews` reads a video (or a one-frame image)
with `read_video` and writes both images with `write_image` (each atomically: a temp name, then
a rename).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Previews:
    """What `write_previews` wrote: the two PNGs, which frames the spritesheet holds (in
    reading order: left to right, then top to bottom; empty cells are black) and its grid."""

    thumbnail: Path
    spritesheet: Path
    frames: list[int]
    columns: int
    rows: int
    cell: tuple[int, int]  # (height, width) of one cell: the video's frame size


def sprite_grid(frames: torch.Tensor, max_frames: int = 16) -> tuple[torch.Tensor, list[int], int, int]:
    """(grid, frame indices, columns, rows): up to `max_frames` of the (T, H, W, 3) uint8
    `frames`, first and last included, tiled ceil(sqrt(n)) to a row at full size."""
    from ..caption.clips import uniform_indices

    if max_frames < 1:
        raise InputError(f"a spritesheet needs at least 1 frame, got max_frames={max_frames}", "pass max_frames 1 or more")
    count, height, width, channels = (int(v) for v in frames.shape)
    indices = uniform_indices(0, count, max_frames)
    columns = math.ceil(math.sqrt(len(indices)))
    rows = math.ceil(len(indices) / columns)
    grid = torch.zeros(rows * height, columns * width, channels, dtype=frames.dtype)
    for cell, index in enumerate(indices):
        row, column = divmod(cell, columns)
        grid[row * height : (row + 1) * height, column * width : (column + 1) * width] = frames[index]
    return grid, indices, columns, rows


def write_previews(video: Path, thumbnail: Path, spritesheet: Path, max_frames: int = 16) -> Previews:
    """Write `video`'s first frame to `thumbnail` and a `sprite_grid` of it to `spritesheet`
    (both PNG). Both images are made before either is written: a video that cannot be read or
    a bad `max_frames` leaves no file."""
    from .video import read_video, write_image

    for path in (thumbnail, spritesheet):
        if Path(path).suffix.lower() != ".png":
            raise InputError(f"preview '{path}' is not a .png file", "pass NAME.png")
    frames = read_video(video).frames
    grid, indices, columns, rows = sprite_grid(frames, max_frames)
    write_image(thumbnail, frames[0])
    write_image(spritesheet, grid)
    return Previews(Path(thumbnail), Path(spritesheet), indices, columns, rows, (int(frames.shape[1]), int(frames.shape[2])))
