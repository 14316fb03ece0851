"""Motion score: how much a clip moves, from frame differences on small grayscale frames.

Static close-ups hurt the motion a text-to-video model learns, so near-static clips are dropped.
The score is the mean absolute difference between consecutive sampled frames, in gray levels
(0-255), after scaling each frame so its short side is `MOTION_SIZE` pixels: small enough that
sensor noise and compression grain average out, large enough to see a moving subject. Frames
are sampled `MOTION_STEP` seconds apart, so the score does not depend on the frame rate; a clip
shorter than one step compares its first and last frame instead (a shorter gap, so a somewhat
lower score for the same motion, but a real one rather than "static" by construction).
"""

from __future__ import annotations

import numpy as np

MOTION_SIZE = 64  # short side of the frames the score is computed on
MOTION_STEP = 0.25  # seconds between compared frames
MOTION_MAX_FRAMES = 64  # long clips widen the step instead of decoding more frames


def motion_size(height: int, width: int, short_side: int = MOTION_SIZE) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side` (never upscaled), both even."""
    scale = min(1.0, short_side / max(1, min(height, width)))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def motion_indices(start: int, end: int, fps: float, step: float = MOTION_STEP, max_frames: int = MOTION_MAX_FRAMES) -> list[int]:
    """Frame indices in [start, end) about `step` seconds apart, at most `max_frames` of them.

    Clips shorter than one step get their first and last frame, so any clip of two or more
    frames has two samples to compare (a single frame has no motion to measure).
    """
    stride = max(1, round(fps * step)) if fps > 0 else 1
    stride = max(stride, -(-(end - start) // max_frames))
    indices = list(range(start, end, stride))
    if len(indices) < 2 and end - start >= 2:
        indices = [start, end - 1]
    return indices


def motion_score(gray: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames of `gray` (N, H, W) in 0-255 gray levels.

    0.0 for fewer than two frames.
    """
    if gray.shape[0] < 2:
        return 0.0
    frames = gray.astype(np.float32)
    return float(np.abs(np.diff(frames, axis=0)).mean())
