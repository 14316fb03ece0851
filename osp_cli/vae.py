"""`osp vae`: encode videos to latents, decode latents to mp4, and round trips."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from . import vae_train
from .console import JobBar, counted, err, print_json
from .options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, JsonOpt, TileOpt

app = typer.Typer(help="CausalVideoVAE: encode videos to latents, decode latents, round trips, training.", no_args_is_help=True)

VideoArg = Annotated[Path, typer.Argument(help="Video (mp4/webm/mov/mkv/gif) or image file.", show_default=False)]
FramesOpt = Annotated[str | None, typer.Option("--frames", help="Frames to use: N (4k+1) or 'auto' (longest 4k+1 prefix). Default: all, which must be 4k+1.")]
StrideOpt = Annotated[int, typer.Option("--stride", min=1, help="Take every S-th frame.")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Resize and center-crop to HxW (multiples of 8).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub repo id, model folder (with vae/) or VAE folder, or builtin:NAME.")]


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (default: refuse). An input is never replaced.")]


def _run(job: Any, label: str, json_out: bool, describe: Callable[[dict[str, Any]], str]) -> None:
    """Plan (paths first, before torch loads), then run `job` with a progress bar, and report its
    record: as JSON, or as the line `describe` makes of it."""
    from osp_core.jobs.vae import plan_vae, run_vae

    plan = plan_vae(job)
    with JobBar(label, transient=True) as bar:
        summary = run_vae(plan, bar).record
    if json_out:
        print_json(summary)
    else:
        err.print(describe(summary))


@app.command()
def encode(
    video: VideoArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Latent file to write (.safetensors).")],
    model: ModelOpt = DEFAULT_MODEL,
    frames: FramesOpt = None,
    stride: StrideOpt = 1,
    size: SizeOpt = None,
    tile: TileOpt = None,
    sample: Annotated[bool, typer.Option("--sample", help="Store a posterior sample instead of its mean.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --sample.")] = 0,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Encode a video to latents (safetensors, with fps/frames/size/model in its header)."""
    from osp_core.jobs.vae import VaeJob

    job = VaeJob("encode", video, output, model=model, frames=frames, stride=stride, size=size, tile=tile, sample=sample, seed=seed, overwrite=overwrite, device=device, dtype=dtype)
    _run(job, "encoding", json_out, lambda summary: f"wrote {output}: latents {tuple(summary['latent_shape'])} from {counted(summary['frames'], 'frame')} {summary['height']}x{summary['width']} in {summary['seconds']:.1f}s")


@app.command()
def decode(
    latents: Annotated[Path, typer.Argument(help="Latent file written by `osp vae encode`.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Video to write (.mp4).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="VAE to decode with (default: the model recorded in the latent file).")] = None,
    fps: Annotated[float | None, typer.Option("--fps", help="Frame rate of the mp4 (default: recorded in the latent file, else 24).")] = None,
    tile: TileOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Decode latents to an H.264 mp4."""
    from osp_core.jobs.vae import VaeJob

    job = VaeJob("decode", latents, output, model=model, fps=fps, tile=tile, overwrite=overwrite, device=device, dtype=dtype)
    _run(job, "decoding", json_out, lambda summary: f"wrote {output}: {counted(summary['frames'], 'frame')} {summary['height']}x{summary['width']} at {summary['fps']:g} fps in {summary['seconds']:.1f}s")


@app.command()
def recon(
    video: VideoArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Reconstruction to write: .mp4, or .png for one frame (an image).")],
    model: ModelOpt = DEFAULT_MODEL,
    frames: FramesOpt = None,
    stride: StrideOpt = 1,
    size: SizeOpt = None,
    tile: TileOpt = None,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Round trip a video through the VAE; prints PSNR and SSIM of the reconstruction."""
    from osp_core.jobs.vae import VaeJob

    job = VaeJob("recon", video, output, model=model, frames=frames, stride=stride, size=size, tile=tile, overwrite=overwrite, device=device, dtype=dtype)
    _run(job, "round trip", json_out, lambda summary: f"wrote {output}: {counted(summary['frames'], 'frame')} {summary['height']}x{summary['width']}  PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.4f}  ({summary['seconds']:.1f}s)")


app.command("train")(vae_train.train)
