"""Measure videos of the shapes world: the shape's color, shape and direction of motion.

Works on any (T, H, W, 3) uint8 video with one bright shape on a dark background, so it grades
generated videos as well as synthetic clips:
- color: mean RGB of the confidently-foreground pixels, nearest color of the world's palette;
- direction: displacement of the coverage-weighted centroid from first to last frame, along
  its dominant axis;
- shape, among the world's shapes, by three features, each a median over frames: solidity
  (area over the convex hull's: a star 0.47, the convex shapes 1) picks the nearest group; in
  it, the fill ratio of the bounding box (square 1.0, circle pi/4, triangle and diamond 1/2);
  where two fill their box alike (a triangle and a diamond), how far the centroid sits below
  the box's centre (a triangle pointing up: 1/6 of the height; a diamond: 0). The default
  world's three shapes are all convex and fill their boxes differently, so it judges them by
  fill ratio alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..data.shapes import WORLD, World, centroid_drop, fill_ratio, solidity

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
    centroid_drop: float  # centroid below the box's centre over its height, median over frames
    solidity: float  # area over the convex hull's, median over frames
    foreground_rgb: tuple[float, float, float]
    frames_with_shape: int

    def to_dict(self) -> dict:
        return asdict(self)


def _nearest_color(rgb: torch.Tensor, world: World) -> str:
    palette = torch.tensor(list(world.colors.values()), dtype=torch.float64)
    return list(world.colors)[int(torch.cdist(rgb.double()[None], palette)[0].argmin())]


def _nearest_shape(ratio: float, drop: float, solid: float, world: World) -> str:
    candidates: list[str] = list(world.shapes)
    for feature, value in ((solidity, solid), (fill_ratio, ratio), (centroid_drop, drop)):
        best = feature(min(candidates, key=lambda s: abs(feature(s) - value)))
        candidates = [s for s in candidates if feature(s) == best]
    return candidates[0]


def _hull_area(rows: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> float:
    """Area of the convex hull of the pixels (as unit squares) spanning first..last in each row."""
    points = sorted({(float(x), float(y)) for r, a, b in zip(rows.tolist(), first.tolist(), last.tolist()) for x in (a, b + 1) for y in (r, r + 1)})

    def half(ordered: list[tuple[float, float]]) -> list[tuple[float, float]]:  # Andrew's monotone chain
        chain: list[tuple[float, float]] = []
        for p in ordered:
            while len(chain) >= 2 and (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1]) - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0]) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    hull = half(points) + half(points[::-1])
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(hull, hull[1:] + hull[:1]))) / 2


def measure(frames: torch.Tensor, world: World = WORLD) -> ShapeMeasurement:
    """Color, shape and motion of the one shape in (T, H, W, 3) uint8 `frames`, judged among
    `world`'s colours and shapes."""
    video = frames.double()
    brightness = video.amax(dim=-1)  # (T, H, W)
    peak = float(torch.quantile(brightness.flatten(), 0.999)) if brightness.numel() else 0.0
    if peak < 40:  # nothing but background
        return ShapeMeasurement(None, None, None, (0.0, 0.0), 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), 0)
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

    ratios, drops, solids = [], [], []
    columns = torch.arange(w)
    for i in torch.nonzero(present).flatten().tolist():
        rows = torch.nonzero(mask[i].any(dim=1)).flatten()
        cols = torch.nonzero(mask[i].any(dim=0)).flatten()
        height = float(rows[-1] - rows[0] + 1)
        box = height * float(cols[-1] - cols[0] + 1)
        area = float(mask[i].sum())
        ratios.append(area / box)
        row_mass = mask[i].sum(dim=1).double()
        drops.append((float((row_mass * ys[0, :, 0]).sum() / row_mass.sum()) - float(rows[0] + rows[-1]) / 2) / height)
        inside = mask[i][rows]
        first, last = torch.where(inside, columns, w).amin(dim=1), torch.where(inside, columns, -1).amax(dim=1)
        solids.append(area / _hull_area(rows, first, last))
    ratio = float(torch.tensor(ratios).median()) if ratios else 0.0
    drop = float(torch.tensor(drops).median()) if drops else 0.0
    solid = float(torch.tensor(solids).median()) if solids else 0.0

    idx = torch.nonzero(present).flatten()
    direction, disp = None, (0.0, 0.0)
    if len(idx) >= 2:
        first, last = int(idx[0]), int(idx[-1])
        dy, dx = float(cy[last] - cy[first]), float(cx[last] - cx[first])
        disp = (dy, dx)
        if max(abs(dy), abs(dx)) >= 1.0:
            direction = ("down" if dy > 0 else "up") if abs(dy) > abs(dx) else ("right" if dx > 0 else "left")
    return ShapeMeasurement(
        color=_nearest_color(rgb, world),
        shape=_nearest_shape(ratio, drop, solid, world) if ratios else None,
        direction=direction,
        displacement=(round(disp[0], 3), round(disp[1], 3)),
        fill_ratio=round(ratio, 4),
        centroid_drop=round(drop, 4),
        solidity=round(solid, 4),
        foreground_rgb=tuple(round(float(c), 1) for c in rgb),
        frames_with_shape=int(present.sum()),
    )


def accuracy(rows: list[dict], key: str) -> float | None:
    """Fraction of rows whose measured `key` equals the expected one (rows with an expectation)."""
    graded = [r for r in rows if r.get(f"expected_{key}") is not None]
    if not graded:
        return None
    return sum(r[key] == r[f"expected_{key}"] for r in graded) / len(graded)
