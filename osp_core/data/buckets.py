"""Frames x height x width buckets: clips of mixed sizes and lengths, each cut to the bucket it
fits, and every batch drawn from one bucket (`GlobalBatchSampler(groups=...)`).

`--buckets auto` derives a clip's bucket from the clip: the most frames of the form 4k+1 it
holds (at its stride, at most --frames) and its own aspect ratio, scaled to fit inside
--height x --width and rounded down to the grid (the VAE's 8x times the patch size). An
explicit list (`17x64x64,9x48x64`) gives each clip the bucket nearest its aspect ratio among
those it can fill, then the one with most frames, then the largest. A clip is never upscaled
unless asked (`data.upscale`), and frames are never invented. A clip that fits no bucket is
left out with its reason, counted and reported before any model loads.

What the plan needs of a clip (frames, size, frame rate) comes from the annotation's
`num_frames`, `resolution` and `fps` when it has them, else from the container's header (one
open per file, no decoding). No torch at import: the command line checks a spec with
`parse_buckets`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..errors import InputError

AUTO = "auto"
PROBE_THREADS = 8
"""Container headers read at once (opening a file is I/O bound)."""
_SPEC = re.compile(r"^(\d+)x(\d+)x(\d+)$")


@dataclass(frozen=True, order=True)
class Bucket:
    """One clip shape: `frames` x `height` x `width` pixels."""

    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def parse_buckets(spec: str, largest: tuple[int, int, int], grid: int) -> list[Bucket]:
    """The buckets of an explicit `FxHxW,FxHxW` list (sorted, duplicates merged; [] for '' and
    'auto'). Each must have 4k+1 frames, sides that are multiples of `grid`, and fit inside
    `largest` = (--frames, --height, --width): those size the model, the memory check and the
    validation samples."""
    text = spec.strip().lower()
    if text in ("", AUTO):
        return []
    found = set()
    for item in text.split(","):
        match = _SPEC.match(item.strip())
        if not match:
            raise InputError(f"cannot read bucket '{item.strip()}' in --buckets '{spec}'", "write FRAMESxHEIGHTxWIDTH items separated by commas (e.g. 17x64x64,9x48x64), or auto")
        bucket = Bucket(*(int(v) for v in match.groups()))
        if min(bucket.frames, bucket.height, bucket.width) < 1 or (bucket.frames - 1) % 4:
            lower = max(1, (bucket.frames - 1) // 4 * 4 + 1)
            raise InputError(f"bucket {bucket}: {bucket.frames} frames is not 4k+1 (the VAE compresses time 4x)", f"use {lower} or {lower + 4} frames")
        if bucket.height % grid or bucket.width % grid or not bucket.height or not bucket.width:
            raise InputError(f"bucket {bucket}: {bucket.height}x{bucket.width} is not a multiple of {grid} (VAE 8x, patch {grid // 8})", f"use sides that are multiples of {grid}")
        frames, height, width = largest
        if bucket.frames > frames or bucket.height > height or bucket.width > width:
            raise InputError(
                f"bucket {bucket} is larger than --frames {frames} / --size {height}x{width}",
                "raise --frames / --size to the largest bucket (they size the model and its memory check), or drop the bucket",
            )
        found.add(bucket)
    return sorted(found, reverse=True)


@dataclass(frozen=True)
class ClipFacts:
    """What the plan knows of one clip: frames in its window, frame size and rate (0: unknown)."""

    window: int
    height: int
    width: int
    fps: float


def clip_stride(fps: float, stride: int, target_fps: float) -> int:
    """Source frames between two frames taken: the clip's rate over the target rate, rounded
    (at least 1); `stride` when there is no target or the clip's rate is unknown."""
    if target_fps > 0 and fps > 0:
        return max(1, round(fps / target_fps))
    return stride


def usable_frames(window: int, stride: int) -> int:
    """Frames a window of `window` source frames gives at `stride`."""
    return (window - 1) // stride + 1 if window > 0 else 0


def auto_bucket(frames: int, height: int, width: int, largest: tuple[int, int, int], grid: int, upscale: bool) -> Bucket | None:
    """The bucket of a clip with `frames` usable frames of height x width (None: it fits none)."""
    most, top, side = largest
    count = (min(frames, most) - 1) // 4 * 4 + 1
    if count < 1:
        return None
    scale = min(Fraction(top, height), Fraction(side, width))
    if not upscale:
        scale = min(scale, Fraction(1))
    h, w = math.floor(height * scale / grid) * grid, math.floor(width * scale / grid) * grid
    return Bucket(count, h, w) if h and w else None


def listed_bucket(frames: int, height: int, width: int, buckets: Sequence[Bucket], upscale: bool) -> Bucket | None:
    """The listed bucket a clip fills (nearest aspect ratio, then most frames, then largest)."""
    fitting = [b for b in buckets if b.frames <= frames and (upscale or (b.height <= height and b.width <= width))]
    if not fitting:
        return None
    aspect = math.log(height / width)
    return min(fitting, key=lambda b: (abs(math.log(b.height / b.width) - aspect), -b.frames, -b.height * b.width))


@dataclass
class ClipPlan:
    """Which clips train and how each is cut."""

    kept: list[int]
    """Indices (into the entries planned) of the clips that train."""
    shapes: list[tuple[int, Bucket]]
    """(stride, bucket) of each kept clip."""
    left_out: list[tuple[str, str]]
    """(path, reason) of each clip that fits no bucket."""

    def counts(self) -> dict[str, int]:
        """Clips per bucket, largest bucket first."""
        counted = Counter(bucket for _, bucket in self.shapes)
        return {str(b): counted[b] for b in sorted(counted, reverse=True)}


def _facts(entry: Any, probe: Callable[[Any], Any], target_fps: float) -> ClipFacts | str:
    """A clip's facts from its annotation, the container filling in what it lacks; or why not."""
    info = None
    if (entry.end is None and entry.num_frames is None) or entry.size is None or (target_fps > 0 and entry.fps is None):
        try:
            info = probe(entry.path)
        except InputError as exc:
            return exc.message
        except Exception as exc:  # any unreadable file is left out and reported, never fatal
            return f"{type(exc).__name__}: {exc}"
    total = entry.num_frames or (info.num_frames if info else 0)
    end = min(entry.end, total) if entry.end is not None and total else (entry.end or total)
    height, width = entry.size or (info.height, info.width)
    return ClipFacts(max(0, end - entry.start), height, width, float(entry.fps or (info.fps if info else 0.0)))


def plan_clips(
    entries: Sequence[Any],
    buckets: str,
    largest: tuple[int, int, int],
    stride: int,
    grid: int,
    upscale: bool = False,
    target_fps: float = 0.0,
    probe: Callable[[Any], Any] | None = None,
) -> ClipPlan:
    """Each entry's stride and bucket (`buckets`: 'auto' or an explicit list; '' cuts every
    clip to `largest`, as without buckets, with a per-clip stride for `target_fps`). `probe`
    reads a file's header (default `io.probe.probe`), only for what the annotation lacks."""
    if probe is None:
        from ..io.probe import probe as probe_file

        probe = probe_file
    listed = parse_buckets(buckets, largest, grid)
    videos = [i for i, e in enumerate(entries) if not e.is_image]
    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        facts = dict(zip(videos, pool.map(lambda i: _facts(entries[i], probe, target_fps), videos)))
    plan = ClipPlan([], [], [])
    for index, entry in enumerate(entries):
        fact = facts.get(index, "an image, not a video (images go in --image-data)")
        if isinstance(fact, str):
            plan.left_out.append((str(entry.path), fact))
            continue
        step = clip_stride(fact.fps, stride, target_fps)
        frames = usable_frames(fact.window, step)
        if not buckets.strip():
            bucket = Bucket(*largest) if frames >= largest[0] else None
        elif listed:
            bucket = listed_bucket(frames, fact.height, fact.width, listed, upscale)
        else:
            bucket = auto_bucket(frames, fact.height, fact.width, largest, grid, upscale)
        if bucket is None:
            plan.left_out.append((str(entry.path), _why_not(frames, step, fact, buckets, upscale)))
            continue
        plan.kept.append(index)
        plan.shapes.append((step, bucket))
    return plan


def _why_not(frames: int, stride: int, fact: ClipFacts, buckets: str, upscale: bool) -> str:
    what = f"{frames} frame(s) at stride {stride}, {fact.height}x{fact.width}"
    if not buckets.strip():
        return f"too short: {what}"
    if fact.window <= 0:
        return "frame count unknown (the container does not say): give num_frames in the annotation"
    hint = "" if upscale else " without upscaling (--upscale allows it)"
    return f"fits no bucket{hint}: {what}"
