"""What a VAE job reads, checked before any model loads (torch-free): the VAE's folder and
config, the frames (`compression`k+1) and the frame size (a multiple of the spatial compression).

Every check raises a one-line `InputError` (or `ModelLoadError` for the model) naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelLoadError
from ..hub import resolve_model_dir
from ..io.probe import probe


def find_vae(model: str | Path) -> Path:
    """The folder holding the VAE's config.json and weights: a model repository's `vae/`, a VAE
    folder, a Hub id (its `vae/` is downloaded) or builtin:NAME."""
    root = resolve_model_dir(str(model), subfolders=["vae"])
    if (root / "vae" / "config.json").is_file():
        return root / "vae"
    if (root / "config.json").is_file():
        return root
    raise ModelLoadError(f"no VAE config in '{model}' (looked for vae/config.json and config.json)", "pass a model repository folder or a VAE folder")


def read_vae_config(folder: Path) -> dict[str, Any]:
    """The VAE's config.json (what memory estimates and frame checks need, before loading)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read '{folder / 'config.json'}' ({type(exc).__name__})", "pass a VAE folder with a valid config.json") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{folder / 'config.json'}' is not a JSON object", "pass a VAE folder with a valid config.json")
    return config


def valid_frame_counts(count: int, compression: int = 4) -> tuple[int, int]:
    """The nearest frame counts of the form compression*k + 1 below and above `count`."""
    lower = max(1, (count - 1) // compression * compression + 1)
    return lower, lower + compression


def wanted_frames(frames: str | int | None, t_comp: int) -> int | None:
    """--frames as a count (None for 'auto' and all frames); one-line errors for the rest."""
    if frames in (None, "auto"):
        return None
    try:
        want = int(frames)
    except (TypeError, ValueError):
        raise InputError(f"--frames must be a number or 'auto', got '{frames}'", "e.g. --frames 17 or --frames auto") from None
    if want < 1 or (want - 1) % t_comp:
        lo, hi = valid_frame_counts(want, t_comp)
        raise InputError(f"frame count {want} is not {t_comp}k+1", f"use {lo} or {hi}, or --frames auto")
    return want


def clip_shape(path: str | Path, frames: str | int | None, stride: int, size: tuple[int, int] | None, t_comp: int = 4, s_comp: int | None = None) -> tuple[int, int, int]:
    """(frames, height, width) that `load_clip` will give for these options, from the file's
    header (no frame is decoded): what a memory check needs before anything big is read. With
    `s_comp`, the frame size is checked as `load_clip` checks it."""
    want = wanted_frames(frames, t_comp)
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}", "pass --stride 1 or more")
    info = probe(path)
    count = len(range(0, info.num_frames, stride))
    if want is not None:
        count = min(want, count)
    elif frames == "auto" and (count - 1) % t_comp:
        count = valid_frame_counts(count, t_comp)[0]
    if s_comp is not None:
        check_clip_size((info.height, info.width), size, s_comp)
    height, width = size if size is not None else (info.height, info.width)
    return count, height, width


def check_clip_size(frame_size: tuple[int, int], size: tuple[int, int] | None, s_comp: int) -> None:
    """The clip's size (`size` when it resizes, else the frame's) must be a multiple of `s_comp`."""
    if size is not None:
        if size[0] % s_comp or size[1] % s_comp:
            raise InputError(f"size {size[0]}x{size[1]} is not a multiple of {s_comp}", f"use e.g. {size[0] // s_comp * s_comp or s_comp}x{size[1] // s_comp * s_comp or s_comp}")
        return
    h, w = frame_size
    if h % s_comp or w % s_comp:
        raise InputError(f"frame size {h}x{w} is not a multiple of {s_comp}", f"pass --size {max(s_comp, h // s_comp * s_comp)}x{max(s_comp, w // s_comp * s_comp)}")


def check_clip(folder: Path, path: str | Path, frames: str | int | None, stride: int, size: tuple[int, int] | None) -> tuple[int, int, int]:
    """(frames, height, width) of the clip `load_clip` would read for the VAE in `folder`, its
    frame count and size checked against the VAE's compression (from the header, no frame read)."""
    from ..memory import VAEShape

    shape = VAEShape.from_config(read_vae_config(folder))
    return clip_shape(path, frames, stride, size, shape.temporal_compression, shape.spatial_compression)
