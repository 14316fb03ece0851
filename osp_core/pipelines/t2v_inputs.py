"""Text-to-video settings that can be checked before any model is imported or loaded:
frame counts, sizes, weight versions and scheduler names (no torch/diffusers imports here,
so the CLI reports bad input at once)."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError, ModelLoadError

DEFAULT_TEXT_ENCODER = "DeepFloyd/t5-v1_1-xxl"
DEFAULT_VERSION = "65x512x512"
# released transformer folders, used to pick weights by frame count before anything is downloaded
RELEASED_VERSIONS = ("65x512x512", "221x512x512")

# the original sampler's `--sample_method` names; the diffusers class is NAME + "Scheduler"
SCHEDULER_NAMES = (
    "PNDM",
    "DDIM",
    "DDPM",
    "EulerDiscrete",
    "EulerAncestralDiscrete",
    "DPMSolverMultistep",
    "DPMSolverSinglestep",
    "HeunDiscrete",
    "DEISMultistep",
    "KDPM2AncestralDiscrete",
)

# PNDM's default config starts with Runge-Kutta steps over the last 4 timesteps
MIN_STEPS = {"PNDM": 4}

_VERSION_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def scheduler_name(name: str) -> str:
    """The canonical scheduler name (case-insensitive, optional "Scheduler" suffix)."""
    key = name.strip().lower().removesuffix("scheduler")
    for known in SCHEDULER_NAMES:
        if known.lower() == key:
            return known
    raise InputError(f"unknown scheduler '{name}'", "choose one of " + ", ".join(SCHEDULER_NAMES))


def check_steps(scheduler: str, steps: int) -> None:
    """Raise `InputError` when `scheduler` (a canonical name) cannot run `steps` steps."""
    least = MIN_STEPS.get(scheduler, 1)
    if steps < least:
        raise InputError(f"{scheduler} needs at least {least} steps, got {steps}", f"pass --steps {least} or more")


def parse_version(version: str) -> tuple[int, int, int]:
    """'65x512x512' -> (65, 512, 512)."""
    match = _VERSION_RE.match(version)
    if not match:
        raise InputError(f"version '{version}' is not FRAMESxHEIGHTxWIDTH", "use e.g. 65x512x512 or 221x512x512")
    frames, height, width = (int(g) for g in match.groups())
    return frames, height, width


def local_versions(root: Path) -> list[str]:
    """Transformer folders (FRAMESxHxW with a config.json) in a model repository folder."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name) and (p / "config.json").is_file()]
    return sorted(found, key=parse_version)


def pick_version(num_frames: int, available: list[str] | tuple[str, ...]) -> str:
    """The weights trained for the shortest videos that still cover `num_frames` frames
    (the longest ones when none does)."""
    if not available:
        raise ModelLoadError("no transformer weights (folders like 65x512x512/) in the model repository", "point --model at an Open-Sora-Plan v1.1.0 repository")
    ordered = sorted(available, key=parse_version)
    for version in ordered:
        if parse_version(version)[0] >= num_frames:
            return version
    return ordered[-1]


def check_video_size(num_frames: int, height: int, width: int, temporal: int = 4, spatial: int = 16) -> None:
    """Raise `InputError` unless frames = `temporal`k+1 and height, width are multiples of
    `spatial` (16 = the VAE's 8x downsampling times the transformer's 2x2 patches)."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        lower = max((num_frames - 1) // temporal * temporal + 1, 1)
        raise InputError(f"frame count {num_frames} is not {temporal}k+1", f"use {lower} or {lower + temporal} frames")
    for name, value in (("height", height), ("width", width)):
        if value < spatial or value % spatial:
            nearest = max(round(value / spatial) * spatial, spatial)
            raise InputError(
                f"{name} {value} is not a multiple of {spatial} (8 for the VAE x 2 for the patches)",
                f"use e.g. {nearest}",
            )
