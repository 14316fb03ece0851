"""The files a job writes for one video, and their schemas: the video (an H.264 mp4, or a PNG
for one frame), optionally its latents, and a JSON sidecar saying how it was made. The one
writer is `write_video_files` (all of them or none, `io.outputs.FileGroup`); the sidecar of each
job (`sample_sidecar`, `edit_sidecar`, `recon_sidecar`) and the latents header
(`latents_header`) are built here, and latent files are written and read back
(`save_latents`, `load_latents`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..version import __version__

if TYPE_CHECKING:
    import torch

LATENTS_SUFFIX = ".latents.safetensors"
LATENTS_KEY = "latents"  # the tensor's name in a latent file


@dataclass
class LatentsFile:
    """Latents to write beside a video: unscaled (1, C, t, h, w) and the header `osp vae decode` reads."""

    path: Path
    latents: torch.Tensor
    header: dict[str, Any]


def latents_header(fps: float, frames: int, height: int, width: int, scaling_factor: float, model: str, **made_by: Any) -> dict[str, Any]:
    """The header of a latents file (`osp vae encode`, `osp t2v sample --save-latents`): what
    `osp vae decode` needs (rate, size, the VAE and its scaling factor), then what made them."""
    return {"fps": fps, "frames": frames, "height": height, "width": width, "scaling_factor": scaling_factor, "model": model, **made_by}


def sample_sidecar(
    prompt: str,
    negative_prompt: str,
    seed: int,
    settings: dict[str, Any],
    models: dict[str, Any],
    video: Path,
    frames: torch.Tensor,
    truncated: str,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The sidecar of a sampled video (`frames`: its decoded (T, H, W, 3)); files are named
    relative to the sidecar, so the folder can move."""
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "settings": settings,
        "models": models,
        "video": video.name,
        "num_frames": int(frames.shape[0]),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "truncated_prompt_part": truncated,
        "seconds": seconds,
        "osp_version": __version__,
    }


def edit_sidecar(fields: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The sidecar of an edit: `fields` (source, video, region, ... models, in that order, from
    `jobs.edit`), then the timings and the osp version."""
    return {**fields, "seconds": seconds, "osp_version": __version__}


def read_edit_sidecar(video: str | Path) -> tuple[Path, dict[str, Any]]:
    """An `osp edit` output and its sidecar's record (source, region, tracks checked present);
    one-line errors for a missing video or an unreadable sidecar."""
    from ..io.paths import check_input_file

    video = check_input_file(video, "video")
    sidecar = video.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not all(key in record for key in ("source", "region", "tracks")):
        raise InputError(f"'{video}' has no readable `osp edit` sidecar ('{sidecar}')", "pass videos written by `osp edit`, with their .json beside them") from None
    if isinstance(record["region"], dict) and record["region"].get("whole_frame"):
        # its measures (outside kept, first frame, tracks followed) need a region and a held first frame
        raise InputError(f"'{video}' is a whole-frame edit (--whole-frame): `osp eval edit` measures region edits", "pass videos edited with --box or --mask")
    return video, record


def recon_sidecar(source: str, model: str, frames: int, size: tuple[int, int], psnr: float, ssim: float, seconds: float) -> dict[str, Any]:
    """The sidecar of a VAE round trip written by the web page."""
    return {"input": source, "model": model, "frames": frames, "size": list(size), "psnr": round(psnr, 3), "ssim": round(ssim, 4), "seconds": round(seconds, 3)}


def write_video_files(
    video: Path,
    frames: torch.Tensor,
    fps: float,
    sidecar: Path,
    record: dict[str, Any],
    latents: LatentsFile | None = None,
    overwrite: bool = False,
    rename_hint: str | None = None,
) -> None:
    """Write `frames` ((T, H, W, 3) uint8; a .png holds one), the latents and the sidecar
    together: all three appear, or none (a file another run wrote meanwhile is not replaced
    unless `overwrite`; `rename_hint` says how the user picks other names). A record with
    `seconds` gets the seconds the video and latents took to write, as `seconds.write`."""
    import time

    from ..io.jsonfile import dumps
    from ..io.outputs import FileGroup
    from ..io.video import write_frames

    paths = [video, *([latents.path] if latents is not None else []), sidecar]
    with FileGroup(paths, overwrite=overwrite, **({"rename_hint": rename_hint} if rename_hint else {})) as group:
        t0 = time.perf_counter()
        write_frames(group.path(video), frames, fps=fps)
        if latents is not None:
            save_latents(group.path(latents.path), latents.latents, latents.header)
        if isinstance(record.get("seconds"), dict):
            record["seconds"]["write"] = round(time.perf_counter() - t0, 3)
        group.path(sidecar).write_text(dumps(record, indent=2) + "\n", encoding="utf-8")
        group.commit()


@dataclass
class LatentFile:
    """A latent file read back: the latents and the header's values (JSON text)."""

    latents: torch.Tensor
    metadata: dict[str, str]


def save_latents(path: str | Path, latents: torch.Tensor, metadata: dict[str, object]) -> Path:
    """Write latents with string metadata in the safetensors header, atomically."""
    from ..io.atomic import save_safetensors
    from ..io.jsonfile import dumps

    header = {k: v if isinstance(v, str) else dumps(v) for k, v in metadata.items()}
    return save_safetensors(Path(path), {LATENTS_KEY: latents}, header)


def load_latents(path: str | Path) -> LatentFile:
    """Read a latent file written by `save_latents` (one-line errors for anything else,
    including a file whose latents have no frames or no pixels)."""
    from safetensors import safe_open

    from ..io.paths import check_input_file

    path = check_input_file(path, "latent file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            if LATENTS_KEY not in handle.keys():
                raise InputError(f"'{path}' holds no '{LATENTS_KEY}' tensor", "pass a file written by `osp vae encode`")
            data = LatentFile(handle.get_tensor(LATENTS_KEY).float(), dict(handle.metadata() or {}))
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise InputError(f"cannot read '{path}' as safetensors ({type(exc).__name__})", "pass a file written by `osp vae encode`") from None
    if data.latents.numel() == 0:
        raise InputError(f"latent file '{path}' holds empty latents (shape {tuple(data.latents.shape)})", "pass latents with at least one frame, written by `osp vae encode`")
    return data


def latent_fps(data: LatentFile, path: str | Path) -> float | None:
    """The frame rate a latent file records (None when it records none); a one-line error
    when the header holds something that is not a positive number."""
    raw = data.metadata.get("fps")
    if raw is None:
        return None
    try:
        value = float(json.loads(raw))
    except (TypeError, ValueError):
        value = None
    if value is None or not (math.isfinite(value) and value > 0):
        raise InputError(f"latent file '{path}' records fps {raw!r}, not a positive number", "pass --fps F to choose the frame rate")
    return value
