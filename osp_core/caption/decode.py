"""One decoding pass per video serves all of its clips.

`osp_core.io.read_video` decodes from the first frame on every call, so reading each of a long
video's clips separately would decode the video once per clip. Here the frames every clip needs
(K uniformly spaced caption frames, and the small grayscale motion frames) are pulled out in a
single pass, scaled by libswscale while converting, and each clip is handed on as soon as its
last frame has gone by; frames no pending clip needs are released.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clips import Clip, uniform_indices
from .motion import motion_indices, motion_size


@dataclass
class ClipFrames:
    """Decoded frames of one clip: `frames` for the captioner (uint8 (H, W, 3) each, in order)
    and `gray` (N, h, w) uint8 for the motion score (None when motion is not measured)."""

    frames: list[np.ndarray]
    gray: np.ndarray | None


def caption_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) with the long side at most `max_side` (never upscaled), aspect kept."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass
class _Plan:
    clip: Clip
    caption: list[int]
    motion: list[int]

    @property
    def last(self) -> int:
        return max(self.caption + self.motion)


def decode_clips(
    path: str | Path,
    clips: list[Clip],
    num_frames: int,
    frame_size: int,
    with_motion: bool,
) -> Iterator[tuple[Clip, ClipFrames | str]]:
    """Yield `(clip, frames)` for each clip of the video at `path`, or `(clip, reason)` when its
    frames cannot be decoded. Clips come out in the order their last needed frame is reached."""
    import av

    if not clips:
        return
    info = clips[0].info
    cap_hw = caption_size(info.height, info.width, frame_size)
    mot_hw = motion_size(info.height, info.width)
    plans = [
        _Plan(
            c,
            uniform_indices(c.start, c.end, num_frames),
            motion_indices(c.start, c.end, c.info.fps) if with_motion and not c.is_image else [],
        )
        for c in clips
    ]
    plans.sort(key=lambda p: p.last)
    want_rgb = {i for p in plans for i in p.caption}
    want_gray = {i for p in plans for i in p.motion}
    rgb: dict[int, np.ndarray] = {}
    gray: dict[int, np.ndarray] = {}
    pending = list(plans)
    index = -1
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        for p in pending:
            yield p.clip, f"cannot open: {exc.__class__.__name__}"
        return
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in want_rgb:
                rgb[index] = frame.to_ndarray(format="rgb24", height=cap_hw[0], width=cap_hw[1])
            if index in want_gray:
                gray[index] = frame.to_ndarray(format="gray", height=mot_hw[0], width=mot_hw[1])
            while pending and pending[0].last <= index:
                done = pending.pop(0)
                yield done.clip, ClipFrames(
                    [rgb[i] for i in done.caption],
                    np.stack([gray[i] for i in done.motion]) if done.motion else None,
                )
                # Release frames that no clip still waiting needs (clips can overlap).
                still = {i for p in pending for i in p.caption + p.motion}
                for store in (rgb, gray):
                    for i in [i for i in store if i not in still]:
                        del store[i]
            if not pending:
                break
    except (av.FFmpegError, IndexError) as exc:
        for p in pending:
            yield p.clip, f"decoding failed after frame {index + 1}: {exc.__class__.__name__}"
        return
    finally:
        container.close()
    for p in pending:
        yield p.clip, f"the video ends at frame {index + 1}, before frame {p.last} of the clip"
