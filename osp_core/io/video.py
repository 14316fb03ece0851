"""Video and image I/O on PyAV: read, sample frames, resize/center-crop, write H.264 mp4.

Frames are uint8 tensors shaped (T, H, W, 3); `to_model_input` turns them into the
(B, 3, T, H, W) float tensors in [-1, 1] that the models take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .atomic import atomic_path
from .media import IMAGE_SUFFIXES


@dataclass
class Video:
    """Decoded frames (T, H, W, 3) uint8 and the frame rate they play at."""

    frames: torch.Tensor
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def _open(path: Path):
    import av

    from .paths import check_input_file

    check_input_file(path, "video")
    try:
        return av.open(str(path))
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise InputError(f"cannot read '{path}': not a video or image PyAV can decode ({exc.__class__.__name__})", "pass an mp4/webm/mov/mkv/gif or an image") from None


def read_video(
    path: str | Path,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    end: int | None = None,
) -> Video:
    """Decode `path` (a video, or an image as a one-frame video).

    Frames `start`, `start + stride`, ... (before `end`) are kept, at most `num_frames` of
    them. Raises `InputError` for missing, corrupt or empty files.
    """
    import av

    path = Path(path)
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}", "pass --stride 1 or more")
    container = _open(path)
    kept: list[np.ndarray] = []
    fps = 0.0
    try:
        streams = container.streams.video
        if not streams:
            raise InputError(f"'{path}' has no video stream", "pass a video or an image file")
        stream = streams[0]
        stream.thread_type = "AUTO"
        if stream.average_rate:
            fps = float(stream.average_rate)
        index = 0
        for frame in container.decode(stream):
            if end is not None and index >= end:
                break
            if index >= start and (index - start) % stride == 0:
                kept.append(frame.to_ndarray(format="rgb24"))
                if num_frames is not None and len(kept) >= num_frames:
                    break
            index += 1
    except av.FFmpegError as exc:
        if not kept:
            raise InputError(f"cannot decode '{path}': {exc.__class__.__name__}", "the file is corrupt or truncated") from None
    finally:
        container.close()
    if not kept:
        raise InputError(f"'{path}' has no frames in the requested range", "check the file, --frames and --stride")
    if path.suffix.lower() in IMAGE_SUFFIXES or fps <= 0:
        fps = fps if fps > 0 else 1.0
    return Video(torch.from_numpy(np.stack(kept)), fps)


def resize_center_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Scale (T, H, W, 3) uint8 frames so they cover `size` (H, W), then center-crop to it."""
    out_h, out_w = size
    t, h, w, _ = frames.shape
    if (h, w) == (out_h, out_w):
        return frames
    scale = max(out_h / h, out_w / w)
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    x = x[:, :, top : top + out_h, left : left + out_w]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def to_model_input(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]."""
    return (frames.permute(3, 0, 1, 2).float() / 127.5 - 1.0).unsqueeze(0)


def from_model_output(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) float in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().contiguous()


def check_fps(fps: float, option: str = "--fps") -> float:
    """`fps` when it is a positive, finite frame rate; a one-line `InputError` naming `option` otherwise."""
    if not (math.isfinite(fps) and fps > 0):
        raise InputError(f"{option} must be a positive frame rate, got {fps:g}", f"pass e.g. {option} 24")
    return fps


def write_frames(path: str | Path, frames: torch.Tensor, fps: float = 24.0) -> Path:
    """Write (T, H, W, 3) uint8 frames by `path`'s type: `write_image` for .png (one frame),
    else `write_video`."""
    if Path(path).suffix.lower() == ".png":
        if len(frames) != 1:
            raise ValueError(f"a .png holds one frame, got {len(frames)}")
        return write_image(path, frames[0])
    return write_video(path, frames, fps=fps)


def write_image(path: str | Path, frame: torch.Tensor) -> Path:
    """Write one (H, W, 3) uint8 frame as a PNG (lossless), atomically."""
    from PIL import Image

    path = Path(path)
    array = frame.cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 frame, got {array.shape} {array.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def write_video(path: str | Path, frames: torch.Tensor, fps: float = 24.0, crf: int = 18) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4 (yuv420p), atomically.

    yuv420p needs even sizes: odd heights/widths are padded by one edge pixel.

    Deterministic: the same frames give the same mp4 bytes, on every run and on every machine
    with the same PyAV/libx264 build. x264's macroblock-tree rate control (`mbtree`) read
    uninitialised memory on small frames (64x64 and the like), so the encoded frames depended
    on what the process had allocated before (a VAE decode made decoded frames differ by up to
    26 grey levels between runs); it is off, which costs bigger files, not quality. x264 also
    runs single-threaded, because its output depends on the thread count (i.e. on the
    machine's cores), and every frame carries its index as timestamp.
    """
    import av

    path = Path(path)
    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {array.shape} {array.dtype}")
    check_fps(fps)
    pad_h, pad_w = array.shape[1] % 2, array.shape[2] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = array.shape[2], array.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "threads": "1", "x264-params": "mbtree=0"}
            for index, image in enumerate(array):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    return path
