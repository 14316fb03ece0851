"""The "shapes" world: synthetic captioned clips that anything in `osp` can train and test on.

Each clip: 17 frames, 64x64, 8 fps, black background, one filled circle, square or triangle
(14-20 px across) in one of five solid colors, moving left, right, up or down at a constant
1.5-2.5 px per frame, starting where it stays fully inside the frame for all 17 frames.
Caption: "a {color} {shape} moving {direction}".

With two objects (`--objects 2`, the editing world) the two differ in color and their paths'
bounding boxes never meet (so they never overlap); the caption joins both with "and", and the
annotation gives each object's per-frame box and centre.

The wide variety (`--variety wide`) draws the same captions more loosely, for training a VAE
that must also reconstruct shapes drawn by other code: sizes 12-22 px, speeds 1-3 px per
frame, colours jittered by up to 30 per channel around the named ones (pure 255 white in half
the white clips), half the clips hard-edged (one sample per pixel), and starts anywhere that
keeps the shape's centre in the frame, so about half the paths run into or past an edge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..io import atomic_path, ensure_writable_dir, write_json
from ..io.atomic import remove_empty_folders
from ..io.paths import folders_to_create

if TYPE_CHECKING:  # torch loads when a clip is rendered: bad options are refused before it
    import torch

NUM_FRAMES = 17
SIZE = 64
FPS = 8
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SHAPE_PX = (14, 20)
SPEED_PX = (1.5, 2.5)
SUPERSAMPLE = 4  # render at 4x and average down: smooth edges and sub-pixel motion
VARIETIES = ("world", "wide")
WIDE_SHAPE_PX = (12, 22)
WIDE_SPEED_PX = (1.0, 3.0)
WIDE_COLOR_JITTER = 30


@dataclass(frozen=True)
class ShapeClip:
    """Everything that determines one clip."""

    color: str
    shape: str
    direction: str
    size_px: float
    speed_px: float
    start_y: float  # centre of the shape in the first frame, pixels
    start_x: float
    rgb: tuple[int, int, int] | None = None  # the wide variety's jittered colour (None: COLORS[color])
    antialias: bool = True  # False: one sample per pixel, hard edges

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.direction)


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def all_captions() -> list[str]:
    """The 60 captions of the world (5 colors x 3 shapes x 4 directions)."""
    return [caption(c, s, d) for c, s, d in itertools.product(COLORS, SHAPES, DIRECTIONS)]


def parse_caption(text: str) -> tuple[str, str, str]:
    """(color, shape, direction) from a caption of this world."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving" or words[1] not in COLORS or words[2] not in SHAPES or words[4] not in DIRECTIONS:
        raise InputError(f"'{text}' is not a caption of the shapes world", "write 'a {color} {shape} moving {direction}', e.g. 'a red circle moving right'")
    return words[1], words[2], words[4]


def sample_clip(rng: np.random.Generator, color: str, shape: str, direction: str, variety: str = "world") -> ShapeClip:
    """Random size, speed and a start position that keeps the shape inside for every frame
    (the wide variety: see the module's docstring)."""
    wide = variety == "wide"
    size = float(rng.uniform(*(WIDE_SHAPE_PX if wide else SHAPE_PX)))
    speed = float(rng.uniform(*(WIDE_SPEED_PX if wide else SPEED_PX)))
    half = 0.0 if wide else size / 2  # wide: only the centre must stay in the frame
    travel = speed * (NUM_FRAMES - 1)
    dy, dx = DIRECTIONS[direction]

    def start_range(step: int) -> tuple[float, float]:
        low, high = half, SIZE - half
        if step > 0:
            high -= travel
        elif step < 0:
            low += travel
        return low, high

    y = float(rng.uniform(*start_range(dy)))
    x = float(rng.uniform(*start_range(dx)))
    if not wide:
        return ShapeClip(color, shape, direction, size, speed, y, x)
    base = np.array(COLORS[color])
    if color == "white" and rng.random() < 0.5:
        rgb = np.full(3, 255)
    else:
        rgb = np.clip(base + rng.integers(-WIDE_COLOR_JITTER, WIDE_COLOR_JITTER + 1, 3), 0, 255)
    return ShapeClip(color, shape, direction, size, speed, y, x, tuple(int(v) for v in rgb), bool(rng.random() < 0.5))


def _mask(shape: str, cy: float, cx: float, size: float, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Coverage in [0, 1] of a (SIZE, SIZE) frame, supersampled (1: hard edges)."""
    n = SIZE * supersample
    coords = (np.arange(n) + 0.5) / supersample
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    half = size / 2
    if shape == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    else:  # triangle pointing up, its bounding box size x size
        top, bottom = cy - half, cy + half
        rel = (yy - top) / size  # 0 at apex, 1 at base
        inside = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= rel * half)
    return inside.reshape(SIZE, supersample, SIZE, supersample).mean(axis=(1, 3))


def centers(clip: ShapeClip) -> np.ndarray:
    """(17, 2) centre (x, y) of the shape's bounding box in each frame, pixels."""
    dy, dx = DIRECTIONS[clip.direction]
    t = np.arange(NUM_FRAMES)
    return np.stack([clip.start_x + dx * clip.speed_px * t, clip.start_y + dy * clip.speed_px * t], axis=1)


def boxes(clip: ShapeClip) -> np.ndarray:
    """(17, 4) bounding box (x0, y0, x1, y1) of the shape in each frame, pixels."""
    c = centers(clip)
    half = clip.size_px / 2
    return np.concatenate([c - half, c + half], axis=1)


def swept_box(clip: ShapeClip) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) the shape covers over the whole clip."""
    b = boxes(clip)
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def boxes_meet(a: tuple[float, ...], b: tuple[float, ...], margin: float = 0.0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def render(clip: ShapeClip | list[ShapeClip]) -> torch.Tensor:
    """(17, 64, 64, 3) uint8 frames of `clip` (or of several clips' shapes, which must not overlap)."""
    import torch


    frames = np.zeros((NUM_FRAMES, SIZE, SIZE, 3), dtype=np.float64)
    for one in [clip] if isinstance(clip, ShapeClip) else clip:
        color = np.array(one.rgb or COLORS[one.color], dtype=np.float64)
        supersample = SUPERSAMPLE if one.antialias else 1
        for t, (cx, cy) in enumerate(centers(one)):
            frames[t] += _mask(one.shape, cy, cx, one.size_px, supersample)[..., None] * color
    return torch.from_numpy(np.round(frames).clip(0, 255).astype(np.uint8))


PAIR_MARGIN = 3.0  # pixels between the two paths' boxes


def sample_pair(rng: np.random.Generator, first: tuple[str, str, str], tries: int = 1000) -> tuple[ShapeClip, ShapeClip]:
    """Two clips whose paths never meet: `first` (color, shape, direction) and a random other
    of another color (rejection sampling of sizes, speeds, starts and the second object)."""
    others = [c for c in COLORS if c != first[0]]
    for _ in range(tries):
        a = sample_clip(rng, *first)
        b = sample_clip(rng, others[int(rng.integers(len(others)))], SHAPES[int(rng.integers(len(SHAPES)))], list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))])
        if not boxes_meet(swept_box(a), swept_box(b), PAIR_MARGIN):
            return a, b
    raise RuntimeError(f"no non-overlapping pair for {first} in {tries} tries")


def object_annotation(clip: ShapeClip) -> dict:
    """One object of a two-object clip: its parameters, per-frame boxes and centres."""
    return {**clip_params(clip), "boxes": np.round(boxes(clip), 3).tolist(), "centers": np.round(centers(clip), 3).tolist()}


def iter_clips(num: int, seed: int, variety: str = "world") -> Iterator[ShapeClip]:
    """`num` clips cycling through all 60 captions (shuffled per cycle), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    for caption in _caption_cycle(rng, num):
        yield sample_clip(rng, *caption, variety=variety)


def iter_pairs(num: int, seed: int) -> Iterator[tuple[ShapeClip, ShapeClip]]:
    """`num` two-object clips; the first object cycles through the 60 captions like `iter_clips`."""
    rng = np.random.default_rng(seed)
    for caption in _caption_cycle(rng, num):
        yield sample_pair(rng, caption)


def _caption_cycle(rng: np.random.Generator, num: int) -> Iterator[tuple[str, str, str]]:
    """`num` (colour, shape, direction) triples cycling through all 60, shuffled per cycle; each
    shuffle draws from `rng` just before its first triple is taken, so callers drawing from the
    same `rng` between triples get the same clips as one loop doing both."""
    combos = list(itertools.product(COLORS, SHAPES, DIRECTIONS))
    order: list[tuple[str, str, str]] = []
    for _ in range(num):
        if not order:
            order = [combos[j] for j in rng.permutation(len(combos))]
        yield order.pop()


def pair_caption(pair: tuple[ShapeClip, ShapeClip]) -> str:
    return " and ".join(clip.caption for clip in pair)


def clip_params(clip: ShapeClip) -> dict:
    """A clip's generating parameters for the annotation (the wide variety's colour and edges
    only where it has them)."""
    params = {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(clip).items()}
    if clip.rgb is None:
        del params["rgb"], params["antialias"]
    else:
        params["rgb"] = list(clip.rgb)
    return params


def synthesize(out_dir: str | Path, num: int, seed: int = 0, overwrite: bool = False, on_clip: Callable[[int], None] | None = None, objects: int = 1, variety: str = "world") -> Path:
    """Write `num` clips as mp4 plus an Open-Sora-Plan annotation (`annotations.json`, paths
    relative to itself: `videos/00000.mp4`) and a data list (`data.txt`: `ROOT,ANNOTATION`)
    into `out_dir`; returns the data list path. Either one works as `--data`.

    Refuses, before writing anything, when a file it would write exists (unless `overwrite`).
    Each mp4 is written atomically and the annotation last, so an interrupted run leaves no
    annotation pointing at missing files; a failed run leaves no folder it created.
    """
    if num < 1:
        raise InputError(f"--num must be at least 1, got {num}", "pass --num 100, for example")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}", "pass e.g. --seed 0")
    if objects not in (1, 2):
        raise InputError(f"--objects must be 1 or 2, got {objects}", "pass --objects 2 for the editing world")
    if variety not in VARIETIES:
        raise InputError(f"--variety must be one of {', '.join(VARIETIES)}, got '{variety}'", "pass --variety wide, or leave it out")
    if variety != "world" and objects != 1:
        raise InputError("--variety wide draws one object per clip", "drop --objects 2 or --variety wide")
    out = Path(out_dir)
    annotation = out / "annotations.json"
    data_list = out / "data.txt"
    videos = out / "videos"
    digits = max(5, len(str(num - 1)))
    names = [f"{index:0{digits}d}.mp4" for index in range(num)]
    if not overwrite:
        existing = [path for path in (annotation, data_list, *(videos / name for name in names)) if path.exists()]
        if existing:
            what = f"'{existing[0].relative_to(out)}' and {len(existing) - 1} more files" if len(existing) > 1 else f"'{existing[0].relative_to(out)}'"
            raise InputError(f"'{out}' already holds {what} that this run would write", "pass --overwrite to replace them, or choose another --out")
    from ..io import write_video

    created = folders_to_create(videos)
    try:
        ensure_writable_dir(videos)
        entries = []
        clips = iter_clips(num, seed, variety) if objects == 1 else iter_pairs(num, seed)
        for index, (name, clip) in enumerate(zip(names, clips)):
            write_video(videos / name, render(list(clip) if objects == 2 else clip), fps=FPS)
            if objects == 1:
                entries.append({"path": f"videos/{name}", "cap": clip.caption, "params": clip_params(clip)})
            else:
                entries.append({"path": f"videos/{name}", "cap": pair_caption(clip), "objects": [object_annotation(one) for one in clip]})
            if on_clip:
                on_clip(index)
        write_json(annotation, entries, indent=1)
        with atomic_path(data_list) as tmp:
            tmp.write_text(f"{out.resolve()},{annotation.resolve()}\n")
    except BaseException:
        remove_empty_folders(created)
        raise
    return data_list


def expected_displacement(clip: ShapeClip) -> tuple[float, float]:
    """(dy, dx) in pixels between the first and last frame."""
    dy, dx = DIRECTIONS[clip.direction]
    travel = clip.speed_px * (NUM_FRAMES - 1)
    return dy * travel, dx * travel


def fill_ratio(shape: str) -> float:
    """Area of the shape over its bounding box."""
    return {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[shape]
