"""Clips: frame ranges of a video (recorded as Open-Sora-Plan `frame_idx`, never re-encoded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.probe import MediaInfo


@dataclass(frozen=True)
class Clip:
    """Frames `start` (inclusive) to `end` (exclusive) of `source`; an image is one frame.

    `path` is the path written to the annotation (relative to the dataset root); `prompt_values`
    carries per-item text for prompt templates (a rough caption, OCR text).
    """

    source: Path
    path: str
    start: int
    end: int
    info: MediaInfo
    is_image: bool = False
    prompt_values: tuple[tuple[str, str], ...] = ()

    @property
    def num_frames(self) -> int:
        return self.end - self.start

    @property
    def frame_idx(self) -> str:
        """Open-Sora-Plan's `"start:end"` (end exclusive)."""
        return f"{self.start}:{self.end}"

    @property
    def key(self) -> str:
        """Identifies the clip in the journal across runs."""
        return self.path if self.is_image else f"{self.path}#{self.frame_idx}"

    @property
    def duration(self) -> float:
        return self.num_frames / self.info.fps if self.info.fps > 0 else 0.0


def split(num_frames: int, clip_frames: int | None, clip_stride: int | None = None) -> list[tuple[int, int]]:
    """`(start, end)` ranges: the whole video, or windows of `clip_frames` every `clip_stride` frames.

    A tail shorter than `clip_frames` is not a clip; a video shorter than one clip gives one range
    covering all of it (the filters drop it as too short).
    """
    if clip_frames is None:
        return [(0, num_frames)]
    if clip_frames < 1:
        raise InputError(f"--clip-frames must be >= 1, got {clip_frames}", "pass a positive frame count")
    stride = clip_frames if clip_stride is None else clip_stride
    if stride < 1:
        raise InputError(f"--clip-stride must be >= 1, got {stride}", "pass a positive frame count")
    if num_frames < clip_frames:
        return [(0, num_frames)]
    return [(s, s + clip_frames) for s in range(0, num_frames - clip_frames + 1, stride)]


def uniform_indices(start: int, end: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over [start, end), first and last included (as v1.1.0)."""
    if end - start <= count:
        return list(range(start, end))
    return [int(i) for i in np.linspace(start, end - 1, count).round().astype(int)]
