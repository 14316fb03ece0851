"""Video I/O on PyAV: formats, frame sampling, resize/crop, atomic mp4 writing."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from osp_core.errors import InputError
from osp_core.io import read_video, resize_center_crop, to_model_input, from_model_output, write_video


def _frames(n=12, h=32, w=48):
    frames = torch.zeros(n, h, w, 3, dtype=torch.uint8)
    for i in range(n):
        frames[i, :, :, 0] = i * 20  # frame index readable from the red channel
    return frames


def _write_with(path, frames, codec, fmt, pix_fmt, rate=10):
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for image in frames.numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("suffix,codec,fmt,pix_fmt", [
    (".webm", "libvpx-vp9", "webm", "yuv420p"),
    (".mkv", "libx264", "matroska", "yuv420p"),
    (".mov", "libx264", "mov", "yuv420p"),
    (".gif", "gif", "gif", "rgb8"),
])  # fmt: skip
def test_reads_common_containers(tmp_path, suffix, codec, fmt, pix_fmt):
    frames = _frames()
    path = tmp_path / f"clip{suffix}"
    try:
        _write_with(path, frames, codec, fmt, pix_fmt)
    except (av.FFmpegError, ValueError) as exc:  # an FFmpeg build without this encoder
        pytest.skip(f"{codec} encoder unavailable: {exc}")
    video = read_video(path)
    assert video.num_frames == 12 and video.size == (32, 48)


def test_mp4_write_read_stride_and_count(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "clip.mp4", frames, fps=12)
    assert (path.stat().st_mode & 0o777) != 0o600
    video = read_video(path)
    assert video.num_frames == 12 and video.fps == pytest.approx(12)
    sampled = read_video(path, num_frames=4, stride=3)
    reds = sampled.frames[:, 16, 24, 0].float()
    assert sampled.num_frames == 4
    assert torch.allclose(reds, torch.tensor([0.0, 60, 120, 180]), atol=6)
    window = read_video(path, start=2, end=6)
    assert window.num_frames == 4 and abs(float(window.frames[0, 16, 24, 0]) - 40) <= 6


def test_still_image_is_a_one_frame_video(tmp_path):
    image = tmp_path / "still.png"
    with av.open(str(image), "w", format="image2") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "rgb24"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 48, 3), 200, np.uint8), format="rgb24")))
        container.mux(stream.encode())
    video = read_video(image)
    assert video.num_frames == 1 and video.size == (32, 48) and int(video.frames[0, 0, 0, 0]) == 200


def test_resize_center_crop_keeps_the_center():
    frames = torch.zeros(2, 40, 80, 3, dtype=torch.uint8)
    frames[:, :, 30:50] = 255  # a bright band in the middle
    out = resize_center_crop(frames, (20, 20))
    assert out.shape == (2, 20, 20, 3) and out.dtype == torch.uint8
    assert out[:, :, 10].float().mean() > 250 and out[:, :, 0].float().mean() < 5


def test_model_tensor_conversion_round_trip():
    frames = _frames(3)
    x = to_model_input(frames)
    assert x.shape == (1, 3, 3, 32, 48) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(from_model_output(x[0]), frames)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="bad.mp4"):
        read_video(bad)


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        write_video(target, torch.zeros(2, 8, 8, 4, dtype=torch.uint8))
    assert target.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_odd_sizes_are_padded_for_yuv420p(tmp_path):
    path = write_video(tmp_path / "odd.mp4", torch.zeros(3, 15, 17, 3, dtype=torch.uint8), fps=5)
    assert read_video(path).size == (16, 18)
