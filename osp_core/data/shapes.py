"""The "shapes" world: synthetic captioned clips that anything in `osp` can train and test on.

Each clip: 17 frames, 64x64, 8 fps, black background, one filled circle, square or triangle
(14-20 px across) in one of five solid colors, moving left, right, up or down at a constant
1.5-2.5 px per frame, starting where it stays fully inside the frame for all 17 frames.
Caption: "a {color} {shape} moving {direction}".

A `World` says which colours and shapes a dataset draws (and which ones `osp eval shapes` may
answer): by default the five colours and three shapes above, the world `builtin:shapes` knows.
`--color NAME=R,G,B` adds a colour, `--colors A,B` draws only those, `--shape` picks among
circle, square, triangle, star (five-pointed, point up) and diamond (a square on its corner);
each fills the same size x size box. Options that name the default world draw exactly the clips
that no options draw.

With two objects (`--objects 2`, the editing world) the two differ in color and their paths'
bounding boxes never meet (so they never overlap); the caption joins both with "and", and the
annotation gives each object's per-frame box and centre.

The wide variety (`--variety wide`) draws the same captions more loosely, for training a VAE
that must also reconstruct shapes drawn by other code: sizes 12-22 px, speeds 1-3 px per
frame, colours jittered by up to 30 per channel around the named ones (pure 255 white in half
the white clips), half the clips hard-edged (one sample per pixel), and starts anywhere that
keeps the shape's centre in the frame, so about half the paths run into or past an edge. The
hues variety (`--variety hues`) draws the same way in any colour (hue uniform, saturation
0.4-1, value 0.6-1 in HSV), so a VAE learns the colours between the world's five as well;
its captions name the world's nearest colour.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
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
SHAPES = ("circle", "square", "triangle")  # the default world's (what builtin:shapes knows)
ALL_SHAPES = (*SHAPES, "star", "diamond")
STAR_INNER = 0.382  # inner over outer radius: the regular pentagram's outline
MIN_PEAK = 64  # an added colour's brightest channel: the judge needs the shape to stand off black
MIN_COLOR_DISTANCE = 40.0  # RGB distance an added colour keeps from every other one, so the judge can tell them apart
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
SHAPE_PX = (14, 20)
SPEED_PX = (1.5, 2.5)
SUPERSAMPLE = 4  # render at 4x and average down: smooth edges and sub-pixel motion
VARIETIES = ("world", "wide", "hues")
WIDE_SHAPE_PX = (12, 22)
WIDE_SPEED_PX = (1.0, 3.0)
WIDE_COLOR_JITTER = 30
HUES_SATURATION = (0.4, 1.0)  # the hues variety's colours, drawn in HSV
HUES_VALUE = (0.6, 1.0)


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
    rgb: tuple[int, int, int] | None = None  # the wide variety's jittered colour, or an added one (None: COLORS[color])
    antialias: bool = True  # False: one sample per pixel, hard edges

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.direction)


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


@dataclass(frozen=True)
class World:
    """The colours (name -> RGB) and shapes a dataset draws, or that a judge may answer."""

    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=lambda: dict(COLORS))
    shapes: tuple[str, ...] = SHAPES

    def combos(self) -> list[tuple[str, str, str]]:
        """Every (colour, shape, direction), in the order the clips cycle through them."""
        return list(itertools.product(self.colors, self.shapes, DIRECTIONS))

    def rgb(self, color: str) -> tuple[int, int, int] | None:
        """The RGB a clip of `color` carries itself: None for a built-in colour (drawn as COLORS says)."""
        return None if COLORS.get(color) == self.colors[color] else self.colors[color]


WORLD = World()


def make_world(add_colors: Iterable[str] = (), only_colors: Iterable[str] = (), shapes: Iterable[str] = ()) -> World:
    """The world of `--color NAME=R,G,B` (each adds a colour), `--colors A,B` (draw only
    those) and `--shape NAME` (draw only those shapes); each option may repeat or hold a comma
    list. None given: the default world."""
    palette = dict(COLORS)
    added: set[str] = set()
    for spec in add_colors:
        name, rgb = _parse_color(spec)
        if name in palette and palette[name] != rgb:
            where = "a built-in colour" if name in COLORS and name not in added else "given twice"
            raise InputError(f"--color {spec}: '{name}' is {where}, with RGB {','.join(map(str, palette[name]))}", f"choose another name, or give '{name}' its RGB")
        if name not in palette:
            if max(rgb) < MIN_PEAK:
                raise InputError(f"--color {spec} is too dark to see on the black background", f"make its brightest channel at least {MIN_PEAK}")
            near = min(palette, key=lambda other: math.dist(palette[other], rgb))
            if math.dist(palette[near], rgb) < MIN_COLOR_DISTANCE:
                raise InputError(f"--color {spec} is too close to '{near}' ({','.join(map(str, palette[near]))}) to tell apart", f"choose an RGB whose Euclidean distance to every other colour is at least {MIN_COLOR_DISTANCE:.0f}")
        palette[name] = rgb
        added.add(name)
    chosen = _names(only_colors)
    unknown = [c for c in chosen if c not in palette]
    if unknown:
        raise InputError(f"--colors: unknown colour '{unknown[0]}'", f"choose from {', '.join(palette)}, or add it with --color {unknown[0]}=R,G,B")
    picked = _names(shapes)
    bad = [s for s in picked if s not in ALL_SHAPES]
    if bad:
        raise InputError(f"--shape: unknown shape '{bad[0]}'", f"choose from {', '.join(ALL_SHAPES)}")
    # palette and shape order, whatever the options' order: the same world always draws the same clips
    colors = {name: rgb for name, rgb in palette.items() if not chosen or name in chosen}
    return World(colors, tuple(s for s in ALL_SHAPES if s in picked) if picked else SHAPES)


def _names(values: Iterable[str]) -> list[str]:
    return [name.strip().lower() for value in values for name in value.split(",") if name.strip()]


def _parse_color(spec: str) -> tuple[str, tuple[int, int, int]]:
    match = re.fullmatch(r"\s*([A-Za-z]+)\s*=\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*", spec)
    if not match:
        raise InputError(f"--color '{spec}' is not NAME=R,G,B", "write e.g. --color orange=235,150,40: a one-word name of letters, three channels 0-255")
    name, rgb = match.group(1).lower(), tuple(int(v) for v in match.groups()[1:])
    if any(v > 255 for v in rgb):
        raise InputError(f"--color {spec}: channels run from 0 to 255", "write e.g. --color orange=235,150,40")
    if name in ("a", "moving", "and", *ALL_SHAPES, *DIRECTIONS):
        raise InputError(f"--color {spec}: '{name}' is a word of the captions already", "choose another colour name")
    return name, rgb  # type: ignore[return-value]


def all_captions(world: World = WORLD) -> list[str]:
    """The captions of `world` (the default's 60: 5 colors x 3 shapes x 4 directions)."""
    return [caption(c, s, d) for c, s, d in world.combos()]


def parse_caption(text: str, world: World = WORLD) -> tuple[str, str, str]:
    """(color, shape, direction) from a caption of `world`."""
    words = text.strip().lower().split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving" or words[1] not in world.colors or words[2] not in ALL_SHAPES or words[4] not in DIRECTIONS:
        raise InputError(f"'{text}' is not a caption of the shapes world", "write 'a {color} {shape} moving {direction}', e.g. 'a red circle moving right' (pass --color NAME=R,G,B for a colour of your own)")
    return words[1], words[2], words[4]


def sample_clip(rng: np.random.Generator, color: str, shape: str, direction: str, variety: str = "world", world: World = WORLD) -> ShapeClip:
    """Random size, speed and a start position that keeps the shape inside for every frame
    (the wide variety: see the module's docstring)."""
    wide = variety in ("wide", "hues")  # hues: the wide drawing in any colour
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
        return ShapeClip(color, shape, direction, size, speed, y, x, world.rgb(color))
    if variety == "hues":  # any colour: the caption names the world's nearest one
        hsv = (rng.uniform(0.0, 1.0), rng.uniform(*HUES_SATURATION), rng.uniform(*HUES_VALUE))
        rgb = np.array([round(255 * v) for v in colorsys.hsv_to_rgb(*hsv)])
        color = min(world.colors, key=lambda name: math.dist(world.colors[name], rgb))
    elif color == "white" and rng.random() < 0.5:
        rgb = np.full(3, 255)
    else:
        rgb = np.clip(np.array(world.colors[color]) + rng.integers(-WIDE_COLOR_JITTER, WIDE_COLOR_JITTER + 1, 3), 0, 255)
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
    elif shape == "triangle":  # pointing up, its bounding box size x size
        top, bottom = cy - half, cy + half
        rel = (yy - top) / size  # 0 at apex, 1 at base
        inside = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= rel * half)
    elif shape == "diamond":
        inside = np.abs(yy - cy) + np.abs(xx - cx) <= half
    elif shape == "star":
        inside = _inside_polygon(yy, xx, cy + STAR_VERTICES[:, 0] * size, cx + STAR_VERTICES[:, 1] * size)
    else:
        raise ValueError(f"unknown shape '{shape}'")
    return inside.reshape(SIZE, supersample, SIZE, supersample).mean(axis=(1, 3))


def _star_vertices() -> np.ndarray:
    """(10, 2) (y, x) of a five-pointed star, point up, stretched to fill the box [-0.5, 0.5]^2."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER)
    points = np.stack([radii * np.sin(angles), radii * np.cos(angles)], axis=1)
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / (high - low)


STAR_VERTICES = _star_vertices()


def _inside_polygon(yy: np.ndarray, xx: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Even-odd rule: points crossing an odd number of edges on a ray to the right are inside."""
    inside = np.zeros(yy.shape, dtype=bool)
    for (y0, x0), (y1, x1) in zip(zip(ys, xs), zip(np.roll(ys, -1), np.roll(xs, -1))):
        if y0 == y1:
            continue
        spans = (yy >= min(y0, y1)) & (yy < max(y0, y1))
        inside ^= spans & (xx < x0 + (yy - y0) * (x1 - x0) / (y1 - y0))
    return inside


def _polygon_area_and_centroid_y(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
    cross = xs * np.roll(ys, -1) - np.roll(xs, -1) * ys
    area = cross.sum() / 2
    return float(abs(area)), float(((ys + np.roll(ys, -1)) * cross).sum() / (6 * area))


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


def sample_pair(rng: np.random.Generator, first: tuple[str, str, str], tries: int = 1000, world: World = WORLD) -> tuple[ShapeClip, ShapeClip]:
    """Two clips whose paths never meet: `first` (color, shape, direction) and a random other
    of another color (rejection sampling of sizes, speeds, starts and the second object)."""
    others = [c for c in world.colors if c != first[0]]
    for _ in range(tries):
        a = sample_clip(rng, *first, world=world)
        b = sample_clip(rng, others[int(rng.integers(len(others)))], world.shapes[int(rng.integers(len(world.shapes)))], list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))], world=world)
        if not boxes_meet(swept_box(a), swept_box(b), PAIR_MARGIN):
            return a, b
    raise RuntimeError(f"no non-overlapping pair for {first} in {tries} tries")


def object_annotation(clip: ShapeClip) -> dict:
    """One object of a two-object clip: its parameters, per-frame boxes and centres."""
    return {**clip_params(clip), "boxes": np.round(boxes(clip), 3).tolist(), "centers": np.round(centers(clip), 3).tolist()}


def iter_clips(num: int, seed: int, variety: str = "world", world: World = WORLD) -> Iterator[ShapeClip]:
    """`num` clips cycling through all captions of `world` (shuffled per cycle), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    for caption in _caption_cycle(rng, num, world):
        yield sample_clip(rng, *caption, variety=variety, world=world)


def iter_pairs(num: int, seed: int, world: World = WORLD) -> Iterator[tuple[ShapeClip, ShapeClip]]:
    """`num` two-object clips; the first object cycles through the captions like `iter_clips`."""
    rng = np.random.default_rng(seed)
    for caption in _caption_cycle(rng, num, world):
        yield sample_pair(rng, caption, world=world)


def _caption_cycle(rng: np.random.Generator, num: int, world: World = WORLD) -> Iterator[tuple[str, str, str]]:
    """`num` (colour, shape, direction) triples cycling through all of `world`'s, shuffled per
    cycle; each shuffle draws from `rng` just before its first triple is taken, so callers drawing
    from the same `rng` between triples get the same clips as one loop doing both."""
    combos = world.combos()
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


def synthesize(out_dir: str | Path, num: int, seed: int = 0, overwrite: bool = False, on_clip: Callable[[int], None] | None = None, objects: int = 1, variety: str = "world", world: World = WORLD) -> Path:
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
        raise InputError(f"--variety must be one of {', '.join(VARIETIES)}, got '{variety}'", "pass --variety wide or hues, or leave it out")
    if variety != "world" and objects != 1:
        raise InputError(f"--variety {variety} draws one object per clip", f"drop --objects 2 or --variety {variety}")
    if objects == 2 and len(world.colors) < 2:
        raise InputError("--objects 2 draws two objects of different colours, and --colors names one", "name at least two colours in --colors")
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
        clips = iter_clips(num, seed, variety, world) if objects == 1 else iter_pairs(num, seed, world)
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
    if shape == "star":
        return _polygon_area_and_centroid_y(STAR_VERTICES[:, 0], STAR_VERTICES[:, 1])[0]
    return {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}[shape]


def solidity(shape: str) -> float:
    """Area of the shape over its convex hull's (a star's hull is the pentagon of its points)."""
    if shape != "star":
        return 1.0
    points = STAR_VERTICES[::2]
    return fill_ratio("star") / _polygon_area_and_centroid_y(points[:, 0], points[:, 1])[0]


def centroid_drop(shape: str) -> float:
    """How far the shape's centroid sits below its bounding box's centre, over the box's height
    (a triangle pointing up: 1/6; the symmetric shapes: 0)."""
    if shape == "star":
        return _polygon_area_and_centroid_y(STAR_VERTICES[:, 0], STAR_VERTICES[:, 1])[1]
    return 1 / 6 if shape == "triangle" else 0.0
