"""The files a job writes for one video, and their schemas: the video (an H.264 mp4, or a PNG
for one frame), optionally its latents, and a JSON sidecar saying how it was made. The one
writer is `write_video_files` (all of them or none, `io.outputs.FileGroup`); the sidecar of each
job (`sample_sidecar`, `edit_sidecar`, `recon_sidecar`) and the latents header
(`latents_header`) are built here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..version import __version__

if TYPE_CHECKING:
    import torch

LATENTS_SUFFIX = ".latents.safetensors"


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
    unless `overwrite`; `rename_hint` says how the user picks other names)."""
    from ..io.jsonfile import dumps
    from ..io.outputs import FileGroup
    from ..io.video import write_frames

    paths = [video, *([latents.path] if latents is not None else []), sidecar]
    with FileGroup(paths, overwrite=overwrite, **({"rename_hint": rename_hint} if rename_hint else {})) as group:
        write_frames(group.path(video), frames, fps=fps)
        if latents is not None:
            from ..pipelines.video_vae import save_latents

            save_latents(group.path(latents.path), latents.latents, latents.header)
        group.path(sidecar).write_text(dumps(record, indent=2) + "\n", encoding="utf-8")
        group.commit()
