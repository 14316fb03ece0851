"""Cheap media probes: frame count, frame rate and size from container metadata, no decoding.

Splitting and the duration/resolution/aspect filters of `osp caption`, and the memory check of
`osp vae encode|recon`, need these before any frame is decoded, so they must stay cheap: when the container does not store a frame count
(webm, some gifs) the packets are counted instead of decoding frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class MediaInfo:
    """What a probe found: `num_frames` frames of `height` x `width` at `fps` (0 for images)."""

    num_frames: int
    fps: float
    height: int
    width: int

    @property
    def duration(self) -> float:
        """Seconds (0 when the frame rate is unknown)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def probe(path: str | Path, image: bool = False) -> MediaInfo:
    """Frame count, fps and size of a video (or an image: one frame) without decoding frames.

    Raises `InputError` for a missing or unreadable file, or one without a video stream.
    """
    import av

    from .paths import check_input_file

    path = check_input_file(path, "image" if image else "video")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise InputError(f"cannot read '{path}': not a file PyAV can decode ({exc.__class__.__name__})", "check the file") from None
    try:
        if not container.streams.video:
            raise InputError(f"'{path}' has no video stream", "pass a video or an image file")
        stream = container.streams.video[0]
        height, width = int(stream.codec_context.height), int(stream.codec_context.width)
        if height <= 0 or width <= 0:
            raise InputError(f"'{path}' has no frame size in its header", "the file is corrupt or truncated")
        if image:
            return MediaInfo(1, 0.0, height, width)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        num_frames = int(stream.frames or 0)
        if num_frames <= 0:
            # One packet per frame for the codecs we meet; the final flush packet is empty.
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as exc:
        raise InputError(f"cannot read '{path}': {exc.__class__.__name__}", "the file is corrupt or truncated") from None
    finally:
        container.close()
    if num_frames <= 0:
        raise InputError(f"'{path}' has no frames", "the file is empty or truncated")
    return MediaInfo(num_frames, fps, height, width)
