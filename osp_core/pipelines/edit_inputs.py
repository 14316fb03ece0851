"""What `osp edit` reads, checked before any model loads: the region (a box or a mask), the
edited first frame and the tracks, all in pixels of the input video (x to the right, y down).

Every check raises a one-line `InputError` naming the bad value and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .t2v_inputs import fewest_steps

if TYPE_CHECKING:  # torch loads where a tensor is made: the text checks run before it (seconds)
    import torch

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; end exclusive


def frame_size(height: int, width: int) -> str:
    """A frame size as osp writes it everywhere (height first), sides named: boxes and tracks
    here are x-first, so a bare "64x60" would read either way."""
    return f"{height}x{width} (HxW)"


# -- region ---------------------------------------------------------------------------------


def parse_box(text: str) -> Box:
    """'X0,Y0,X1,Y1' -> four integers (not yet checked against a frame)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--box '{text}' is not four integers X0,Y0,X1,Y1", "pass pixels of the input video, e.g. --box 8,8,40,40 (x right, y down, end exclusive)")
    return values[0], values[1], values[2], values[3]


def check_box(box: Box, height: int, width: int) -> Box:
    """`box` when it is a non-empty box inside a height x width frame."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"--box {x0},{y0},{x1},{y1} is empty", "give X1 > X0 and Y1 > Y0 (end exclusive)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InputError(f"--box {x0},{y0},{x1},{y1} is outside the {frame_size(height, width)} frame", f"keep 0 <= X0 < X1 <= {width} and 0 <= Y0 < Y1 <= {height}")
    return box


def box_mask(box: Box, frames: int, height: int, width: int) -> torch.Tensor:
    """(T, H, W) float mask, 1 inside `box` in every frame (ReVideo's region is fixed)."""
    import torch

    x0, y0, x1, y1 = box
    mask = torch.zeros(frames, height, width)
    mask[:, y0:y1, x0:x1] = 1.0
    return mask


def load_mask(path: str | Path, frames: int, height: int, width: int) -> torch.Tensor:
    """(T, H, W) float mask from an image (every frame) or a video of masks (its first `frames`
    frames); a pixel is set when its brightest channel is above half."""
    from ..io import read_video
    from ..io.paths import check_input_file

    check_input_file(path, "mask")
    video = read_video(path).frames  # an image reads as one frame
    if tuple(video.shape[1:3]) != (height, width):
        raise InputError(f"mask '{path}' is {frame_size(video.shape[1], video.shape[2])}, the video {frame_size(height, width)}", f"make a {frame_size(height, width)} mask (white = edit)")
    mask = (video.amax(dim=-1) > 127).float()
    if mask.shape[0] == 1:
        mask = mask.expand(frames, height, width).clone()
    elif mask.shape[0] < frames:
        raise InputError(f"mask video '{path}' has {mask.shape[0]} frames, the edit {frames}", f"give a mask image or a mask video with at least {frames} frames")
    else:
        mask = mask[:frames]
    if not bool(mask.any()):
        raise InputError(f"mask '{path}' has no set pixel", "paint the region to edit white on black")
    return mask


def latent_mask(mask: torch.Tensor, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """(T, H, W) pixel mask -> (t, h, w) latent mask: a latent cell is edited when any pixel
    it covers is (latent frame 0 is pixel frame 0; frame i covers pixels 4i-3 .. 4i)."""
    import torch
    import torch.nn.functional as F

    first, rest = mask[:1], mask[1:]
    groups = [first] + ([rest.reshape(-1, temporal, *mask.shape[1:]).amax(dim=1)] if len(rest) else [])
    per_frame = torch.cat(groups)  # (t, H, W)
    return F.max_pool2d(per_frame[:, None], spatial, spatial)[:, 0]


def feathered(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A soft copy of a (T, H, W) {0, 1} mask that ramps from 0 at its border to 1 `width`
    pixels inside, and stays exactly 0 outside (pasting source pixels back keeps them exact)."""
    import torch
    import torch.nn.functional as F

    if width <= 0:
        return mask.clone()
    x = mask[:, None]
    layers = [-F.max_pool2d(-x, 2 * k + 1, 1, k) for k in range(width)]  # erosions by 0..width-1
    return torch.stack(layers).mean(dim=0)[:, 0]


def feather_width(height: int, width: int) -> int:
    """Feathering in pixels: 2 at 64 px, scaled with the frame."""
    return max(1, round(min(height, width) / 32))


# -- first frame ----------------------------------------------------------------------------


def load_first_frame(path: str | Path, height: int, width: int) -> torch.Tensor:
    """(H, W, 3) uint8 edited first frame; it must have the video's size."""
    from ..io import read_video
    from ..io.paths import check_input_file

    check_input_file(path, "first frame")
    frames = read_video(path).frames
    if tuple(frames.shape[1:3]) != (height, width):
        raise InputError(f"first frame '{path}' is {frame_size(frames.shape[1], frames.shape[2])}, the video {frame_size(height, width)}", f"resize it to {frame_size(height, width)} (the edited frame must line up with the video)")
    return frames[0]


# -- tracks ---------------------------------------------------------------------------------


def parse_track(text: str, frames: int) -> torch.Tensor:
    """'X0,Y0:X1,Y1' -> (T, 2) points moving linearly from the start to the end point."""
    try:
        start, end = ([float(v) for v in part.split(",")] for part in str(text).split(":"))
        if len(start) != 2 or len(end) != 2 or not all(math.isfinite(v) for v in start + end):
            raise ValueError
    except ValueError:
        raise InputError(f"--track '{text}' is not X0,Y0:X1,Y1", "pass a start and an end point in pixels, e.g. --track 10,20:40,20") from None
    import torch

    a, b = torch.tensor(start), torch.tensor(end)
    steps = torch.linspace(0, 1, frames)[:, None]
    return a + (b - a) * steps


def load_track_file(path: str | Path, frames: int) -> list[torch.Tensor]:
    """Tracks from JSON `[[[x, y], ...per frame], ...per track]` -> (T, 2) each."""
    import torch

    from ..io.paths import check_input_file

    check_input_file(path, "track file")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        tracks = [torch.tensor(track, dtype=torch.float32) for track in data]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, RuntimeError):
        raise InputError(f"track file '{path}' is not a JSON list of tracks", "write [[[x, y], ...one point per frame], ...one list per track]") from None
    if not tracks:
        raise InputError(f"track file '{path}' has no tracks", "write at least one track: [[[x, y], ...one point per frame]]")
    for index, track in enumerate(tracks):
        if track.ndim != 2 or track.shape[1] != 2:
            raise InputError(f"track {index} in '{path}' is not a list of [x, y] points", "write [[[x, y], ...one point per frame], ...]")
        if track.shape[0] != frames:
            raise InputError(f"track {index} in '{path}' has {track.shape[0]} points, the edit {frames} frames", f"give one point per frame ({frames}), or pass --frames to match")
    return tracks


def check_tracks(tracks: list[torch.Tensor], height: int, width: int) -> None:
    """Every point a finite number inside the frame (x in [0, W), y in [0, H))."""
    import torch

    for index, track in enumerate(tracks):
        infinite = ~torch.isfinite(track).all(dim=1)
        if bool(infinite.any()):
            frame = int(torch.nonzero(infinite)[0])
            x, y = (float(v) for v in track[frame])
            raise InputError(f"track {index} point ({x:g}, {y:g}) at frame {frame} is not a finite number", "give every point as two finite pixel coordinates [x, y]")
        bad = (track[:, 0] < 0) | (track[:, 0] >= width) | (track[:, 1] < 0) | (track[:, 1] >= height)
        if bool(bad.any()):
            frame = int(torch.nonzero(bad)[0])
            x, y = (float(v) for v in track[frame])
            raise InputError(f"track {index} point ({x:g}, {y:g}) at frame {frame} is outside the {frame_size(height, width)} frame", f"keep 0 <= x < {width} and 0 <= y < {height}")


def region_displacement(tracks: list[torch.Tensor], mask0: torch.Tensor) -> torch.Tensor:
    """(T, 2) mean (dx, dy) from frame 0 of the tracks that start inside the region (all tracks
    when none does): how the region's content moves."""
    import torch

    if not tracks:
        raise ValueError("no tracks")
    inside = [t for t in tracks if bool(mask0[int(min(max(t[0, 1], 0), mask0.shape[0] - 1)), int(min(max(t[0, 0], 0), mask0.shape[1] - 1))] > 0)]
    chosen = torch.stack(inside or tracks)  # (K, T, 2)
    return (chosen - chosen[:, :1]).mean(dim=0)


def shift(x: torch.Tensor, dx: float, dy: float) -> torch.Tensor:
    """(..., H, W) translated by (dx, dy) cells (bilinear, border values repeat)."""
    import torch
    import torch.nn.functional as F

    if abs(dx) < 1e-6 and abs(dy) < 1e-6:
        return x.clone()
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:]).float()
    h, w = shape[-2:]
    theta = torch.tensor([[1.0, 0.0, -2 * dx / w], [0.0, 1.0, -2 * dy / h]], dtype=flat.dtype).expand(flat.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(flat.shape), align_corners=False)
    return F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False).reshape(shape).to(x.dtype)


# -- steps --------------------------------------------------------------------------------------


def steps_after_cut(steps: int, strength: float, fewest: int = 1) -> int:
    """How many of `steps` an edit at `strength` runs: the last round(steps * strength)
    (image-to-image's strength), at least `fewest` (the scheduler's; one) and at most all."""
    return steps if strength >= 1 else min(steps, max(fewest, 1, round(steps * strength)))


def edit_steps(steps: int, strength: float, scheduler: Any) -> int:
    """The steps an edit at `strength` runs with `scheduler` (a name or an instance): the last
    `strength` of `steps`, at least the scheduler's fewest (`steps_after_cut`)."""
    return steps_after_cut(steps, strength, fewest_steps(scheduler))
