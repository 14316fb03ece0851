"""Measure an edit against what was asked, and make edits of the two-object shapes world to
measure (`osp eval edit`, benchmarks/edit.py).

For one edit (uint8 frames (T, H, W, 3), region (T, H, W)):
- outside PSNR: the edited video against the source, over the pixels outside the region;
- colour and shape of the edited object (inside the region, `eval.shapes.measure`) against
  those of the object in the edited first frame;
- trajectory error: mean distance in pixels between the object's centroid in each frame and
  the requested path (the tracks' mean displacement, from the object's centroid in the edited
  first frame);
- first-frame fidelity: PSNR of frame 0 inside the region against the edited first frame.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import shapes
from .shapes import COVERAGE_THRESHOLD, measure


def masked_psnr(reference: torch.Tensor, test: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR (dB) over the pixels where `mask` (T, H, W) is set (inf when identical or empty)."""
    keep = mask.bool()
    if not bool(keep.any()):
        return float("inf")
    diff = (reference.double() - test.double())[keep]
    mse = float((diff**2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def centroids(frames: torch.Tensor) -> torch.Tensor:
    """(T, 2) brightness-weighted centroid (x, y) of the bright pixels of each frame (NaN where
    none), as `eval.shapes.measure` weighs them."""
    brightness = frames.double().amax(dim=-1)
    peak = float(torch.quantile(brightness.flatten(), 0.999)) if brightness.numel() else 0.0
    if peak < 40:
        return torch.full((frames.shape[0], 2), float("nan"), dtype=torch.float64)
    weight = (brightness / peak).clamp(0, 1) * (brightness > COVERAGE_THRESHOLD * peak)
    area = weight.sum(dim=(1, 2))
    ys = torch.arange(frames.shape[1], dtype=torch.float64)[None, :, None]
    xs = torch.arange(frames.shape[2], dtype=torch.float64)[None, None, :]
    cx = (weight * xs).sum(dim=(1, 2)) / area
    cy = (weight * ys).sum(dim=(1, 2)) / area
    out = torch.stack([cx, cy], dim=1)
    out[area < 1e-6] = float("nan")
    return out


def evaluate_edit(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, first_frame: torch.Tensor, tracks: list[torch.Tensor]) -> dict:
    """The measures of one edit (see the module docstring); `first_frame` is the edited first
    frame as given (the source's frame 0 for a motion-only edit)."""
    n = min(len(edited), len(source), len(mask))
    edited, source, mask = edited[:n], source[:n], mask[:n]
    inside = mask[..., None].to(edited.dtype)
    wanted = measure((first_frame * inside[0])[None])
    got = measure(edited * inside)
    row = {
        "psnr_outside": round(masked_psnr(source, edited, 1 - mask), 3),
        "first_frame_psnr": round(masked_psnr(first_frame[None], edited[:1], mask[:1]), 3),
        "expected_color": wanted.color,
        "expected_shape": wanted.shape,
        "color": got.color,
        "shape": got.shape,
        "trajectory_error": None,
    }
    if tracks:
        path = torch.stack(tracks).double().mean(dim=0)[:n]  # (T, 2)
        start = centroids((first_frame * inside[0])[None])[0]
        wanted_path = start + (path - path[0])
        got_path = centroids(edited * inside)
        distance = (got_path - wanted_path).norm(dim=1)
        # a frame where the object vanished counts as the frame's diagonal (the worst miss)
        distance = torch.where(torch.isnan(distance), torch.tensor(math.hypot(*edited.shape[1:3]), dtype=torch.float64), distance)
        row["trajectory_error"] = round(float(distance.mean()), 3)
    return row


def summarize(rows: list[dict]) -> dict:
    """Means and accuracies over edits (PSNRs averaged in dB, inf capped at 100 dB)."""

    def mean(key: str) -> float | None:
        values = [min(r[key], 100.0) for r in rows if r.get(key) is not None]
        return round(sum(values) / len(values), 3) if values else None

    def accuracy(key: str) -> float | None:
        graded = [r for r in rows if r.get(f"expected_{key}") is not None]
        return round(sum(r[key] == r[f"expected_{key}"] for r in graded) / len(graded), 4) if graded else None

    return {
        "edits": len(rows),
        "psnr_outside": mean("psnr_outside"),
        "color_accuracy": accuracy("color"),
        "shape_accuracy": accuracy("shape"),
        "trajectory_error": mean("trajectory_error"),
        "first_frame_psnr": mean("first_frame_psnr"),
    }


# -- edits of the two-object world ----------------------------------------------------------


@dataclass
class EditTask:
    """One edit of a two-object clip: object 0 gets a new colour and/or shape (the edited
    first frame) and a new straight path (one track); object 1 stays outside the box."""

    source: torch.Tensor  # (17, 64, 64, 3) uint8
    first_frame: torch.Tensor  # (64, 64, 3) uint8
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    track: tuple[float, float, float, float]  # x0, y0, x1, y1
    target: torch.Tensor  # (17, 64, 64, 3) uint8: the edit done right
    prompt: str
    edited: shapes.ShapeClip
    other: shapes.ShapeClip

    @property
    def track_arg(self) -> str:
        x0, y0, x1, y1 = self.track
        return f"{x0:.2f},{y0:.2f}:{x1:.2f},{y1:.2f}"

    @property
    def box_arg(self) -> str:
        return ",".join(str(v) for v in self.box)


BOX_MARGIN = 2  # pixels around the old and new paths
# the new path is slower than the world's (1.5-2.5 px/frame): a box around both paths must
# still leave room for the other object in a 64 px frame
EDIT_SPEED_PX = (0.5, 1.5)


def _box_around(*clips: shapes.ShapeClip) -> tuple[int, int, int, int]:
    boxes = [shapes.swept_box(c) for c in clips]
    x0 = max(0, math.floor(min(b[0] for b in boxes)) - BOX_MARGIN)
    y0 = max(0, math.floor(min(b[1] for b in boxes)) - BOX_MARGIN)
    x1 = min(shapes.SIZE, math.ceil(max(b[2] for b in boxes)) + BOX_MARGIN)
    y1 = min(shapes.SIZE, math.ceil(max(b[3] for b in boxes)) + BOX_MARGIN)
    return x0, y0, x1, y1


def make_edit_task(rng: np.random.Generator, tries: int = 2000) -> EditTask:
    """A random feasible edit: the new path stays in the frame and the box (both paths) keeps
    clear of the other object."""
    combos = list(itertools.product(shapes.COLORS, shapes.SHAPES, shapes.DIRECTIONS))
    for _ in range(tries):
        color, shape, direction = combos[int(rng.integers(len(combos)))]
        a, b = shapes.sample_pair(rng, (color, shape, direction))
        new_colors = [c for c in shapes.COLORS if c not in (a.color, b.color)]
        new_color = new_colors[int(rng.integers(len(new_colors)))]
        new_shape = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
        new_direction = [d for d in shapes.DIRECTIONS if d != a.direction][int(rng.integers(3))]
        speed = float(rng.uniform(*EDIT_SPEED_PX))
        edited = shapes.ShapeClip(new_color, new_shape, new_direction, a.size_px, speed, a.start_y, a.start_x)
        box_edges = shapes.boxes(edited)
        if box_edges[:, :2].min() < 0 or box_edges[:, 2:].max() > shapes.SIZE:
            continue
        box = _box_around(a, edited)
        if shapes.boxes_meet(tuple(float(v) for v in box), shapes.swept_box(b), 1.0):
            continue
        start, end = shapes.centers(edited)[0], shapes.centers(edited)[-1]
        target = shapes.render([edited, b])
        return EditTask(
            source=shapes.render([a, b]),
            first_frame=target[0].clone(),
            box=box,
            track=(float(start[0]), float(start[1]), float(end[0]), float(end[1])),
            target=target,
            prompt=edited.caption,
            edited=edited,
            other=b,
        )
    raise RuntimeError(f"no feasible edit in {tries} tries")


# -- an `osp edit` output, read back ---------------------------------------------------------


def evaluate_sidecar(video: str | Path) -> dict:
    """`evaluate_edit` for an `osp edit` output, from its sidecar (its relative paths are
    relative to the sidecar's folder; older sidecars wrote them relative to where `osp edit`
    ran, the working directory is tried after the folder)."""
    from ..io import read_video
    from ..jobs.records import read_edit_sidecar
    from ..pipelines.edit_inputs import box_mask, load_first_frame, load_mask

    video, record = read_edit_sidecar(video)
    source_name, region, tracks = record["source"], record["region"], record["tracks"]

    def locate(name: str) -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        return video.parent / path if (video.parent / path).exists() or not path.exists() else path

    edited = read_video(video).frames
    source = read_video(locate(source_name)).frames[: len(edited)]
    count, height, width = (int(v) for v in edited.shape[:3])
    mask = box_mask(tuple(region["box"]), count, height, width) if "box" in region else load_mask(locate(region["mask"]), count, height, width)
    first = load_first_frame(locate(record["first_frame"]), height, width) if record.get("first_frame") else source[0]
    return evaluate_edit(edited, source, mask, first, [torch.tensor(t, dtype=torch.float64) for t in tracks])
