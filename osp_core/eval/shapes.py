"""Measure videos of the shapes world: the shape's color, shape and direction of motion.

Works on any (T, H, W, 3) uint8 video with one bright shape on a dark background, so it grades
generated videos as well as synthetic clips:
- color: mean RGB of the confidently-foreground pixels, nearest palette color;
- direction: displacement of the coverage-weighted centroid from first to last frame, along
  its dominant axis;
- shape: fill ratio of the shape's bounding box (square 1.0, circle pi/4, triangle 1/2),
  median over frames, nearest of the three.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..data.shapes import COLORS, SHAPES, fill_ratio

# A pixel belongs to the shape when its brightest channel exceeds this fraction of the
# palette color's brightest channel (edges are anti-aliased, H.264 adds ringing).
COVERAGE_THRESHOLD = 0.5
MIN_PIXELS = 4


@dataclass
class ShapeMeasurement:
    color: str | None
    shape: str | None
    direction: str | None
    displacement: tuple[float, float]  # (dy, dx) pixels, first to last frame
    fill_ratio: float
    foreground_rgb: tuple[float, float, float]
    frames_with_shape: int

    def to_dict(self) -> dict:
        return asdict(self)


def _nearest_color(rgb: torch.Tensor) -> str:
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float64)
    return list(COLORS)[int(torch.cdist(rgb.double()[None], palette)[0].argmin())]


def _nearest_shape(ratio: float) -> str:
    return min(SHAPES, key=lambda s: abs(fill_ratio(s) - ratio))


def measure(frames: torch.Tensor) -> ShapeMeasurement:
    """Color, shape and motion of the one shape in (T, H, W, 3) uint8 `frames`."""
    video = frames.double()
    brightness = video.amax(dim=-1)  # (T, H, W)
    peak = float(torch.quantile(brightness.flatten(), 0.999)) if brightness.numel() else 0.0
    if peak < 40:  # nothing but background
        return ShapeMeasurement(None, None, None, (0.0, 0.0), 0.0, (0.0, 0.0, 0.0), 0)
    mask = brightness > COVERAGE_THRESHOLD * peak
    counts = mask.sum(dim=(1, 2))
    present = counts >= MIN_PIXELS
    fg = video[mask]
    rgb = fg.mean(dim=0) if len(fg) else torch.zeros(3, dtype=torch.float64)

    t, h, w = mask.shape
    ys = torch.arange(h, dtype=torch.float64)[None, :, None]
    xs = torch.arange(w, dtype=torch.float64)[None, None, :]
    weight = (brightness / peak).clamp(0, 1) * mask
    area = weight.sum(dim=(1, 2)).clamp_min(1e-9)
    cy = (weight * ys).sum(dim=(1, 2)) / area
    cx = (weight * xs).sum(dim=(1, 2)) / area

    ratios = []
    for i in torch.nonzero(present).flatten().tolist():
        rows = torch.nonzero(mask[i].any(dim=1)).flatten()
        cols = torch.nonzero(mask[i].any(dim=0)).flatten()
        box = float((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))
        ratios.append(float(mask[i].sum()) / box)
    ratio = float(torch.tensor(ratios).median()) if ratios else 0.0

    idx = torch.nonzero(present).flatten()
    direction, disp = None, (0.0, 0.0)
    if len(idx) >= 2:
        first, last = int(idx[0]), int(idx[-1])
        dy, dx = float(cy[last] - cy[first]), float(cx[last] - cx[first])
        disp = (dy, dx)
        if max(abs(dy), abs(dx)) >= 1.0:
            direction = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
    return ShapeMeasurement(
        color=_nearest_color(rgb),
        shape=_nearest_shape(ratio) if ratios else None,
        direction=direction,
        displacement=(round(disp[0], 3), round(disp[1], 3)),
        fill_ratio=round(ratio, 4),
        foreground_rgb=tuple(round(float(c), 1) for c in rgb),
        frames_with_shape=int(present.sum()),
    )


def accuracy(rows: list[dict], key: str) -> float | None:
    """Fraction of rows whose measured `key` equals the expected one (rows with an expectation)."""
    graded = [r for r in rows if r.get(f"expected_{key}") is not None]
    if not graded:
        return None
    return sum(r[key] == r[f"expected_{key}"] for r in graded) / len(graded)


def mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
