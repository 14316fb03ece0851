"""`osp vae`: encode videos to latents, decode latents to mp4, and round trips."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from . import vae_train
from .console import err, print_json, progress, status
from .options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, JsonOpt, TileOpt

app = typer.Typer(help="CausalVideoVAE: encode videos to latents, decode latents, round trips, training.", no_args_is_help=True)

VideoArg = Annotated[Path, typer.Argument(help="Video (mp4/webm/mov/mkv/gif) or image file.", show_default=False)]
FramesOpt = Annotated[str | None, typer.Option("--frames", help="Frames to use: N (4k+1) or 'auto' (longest 4k+1 prefix). Default: all, which must be 4k+1.")]
StrideOpt = Annotated[int, typer.Option("--stride", min=1, help="Take every S-th frame.")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Resize and center-crop to HxW (multiples of 8).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub repo id, model folder (with vae/) or VAE folder, or builtin:NAME.")]


OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (default: refuse). An input is never replaced.")]


def _plan(model: str, device: str | None, dtype: str | None):
    """Device, dtype and the VAE folder: everything the memory check needs, no weights loaded."""
    from osp_core.device import resolve
    from osp_core.pipelines.video_vae import find_vae

    dev, dt = resolve(device, dtype)
    return find_vae(model), dev, dt


def _load(folder: Path, dev, dt, tile: bool | None):
    from osp_core.pipelines.video_vae import configure_tiling, load_vae

    with status(f"loading VAE from {folder}"):
        vae = load_vae(folder, dev, dt)
    configure_tiling(vae, tile)
    return vae


def _read(video: Path, frames: str | None, stride: int, size: str | None, vae):
    from osp_core.io import parse_size
    from osp_core.pipelines.video_vae import load_clip

    return load_clip(video, frames, stride, parse_size(size), (vae.temporal_compression, vae.spatial_compression))


def _check_paths(source: Path, output: Path, suffixes: tuple[str, ...], overwrite: bool, what: str) -> None:
    """Fail on bad paths before spending seconds on loading a model."""
    from osp_core.errors import InputError
    from osp_core.io.paths import check_input_file, check_output

    check_input_file(source, what)
    if output.suffix.lower() not in suffixes:
        from osp_core.io.media import IMAGE_SUFFIXES

        # an image round-trips to an image
        suggested = ".png" if ".png" in suffixes and source.suffix.lower() in IMAGE_SUFFIXES else suffixes[0]
        raise InputError(f"output '{output}' must end in {' or '.join(suffixes)}", f"e.g. -o {output.with_suffix(suggested).name}")
    check_output(output, overwrite=overwrite, inputs=[source])


MEMORY_HINT = "pass a smaller --size or fewer --frames"


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
    _check_paths(video, output, (".safetensors",), overwrite, "video")  # before the heavy imports
    import torch

    from osp_core.io import parse_size, to_model_input
    from osp_core.memory import oom_as_error
    from osp_core.pipelines.video_vae import check_clip_fits, save_latents
    from osp_core.pipelines.video_vae import encode as vae_encode

    folder, dev, dt = _plan(model, device, dtype)
    shape = check_clip_fits(folder, "encode", video, frames, stride, parse_size(size), dev, dt, tile)
    vae = _load(folder, dev, dt, tile)
    clip = _read(video, frames, stride, size, vae)
    x = to_model_input(clip.frames)
    start = time.perf_counter()
    with progress(transient=True) as bar, oom_as_error(f"encoding {'x'.join(map(str, shape))}", MEMORY_HINT):
        task = bar.add_task("encoding", total=vae.num_tiles(x.shape, latent=False))
        generator = torch.Generator(dev).manual_seed(seed) if sample else None
        latents = vae_encode(vae, x, sample=sample, generator=generator, progress=lambda: bar.advance(task))
    seconds = time.perf_counter() - start
    meta = {
        "fps": clip.fps,
        "frames": clip.num_frames,
        "height": clip.size[0],
        "width": clip.size[1],
        "scaling_factor": vae.config.scaling_factor,
        "model": model,
        "source": str(video),
        "posterior": "sample" if sample else "mean",
    }
    save_latents(output, latents, meta)
    summary = {"output": str(output), "latent_shape": list(latents.shape), "seconds": round(seconds, 3), **meta}
    if json_out:
        print_json(summary)
    else:
        err.print(f"wrote {output}: latents {tuple(latents.shape)} from {clip.num_frames} frames {clip.size[0]}x{clip.size[1]} in {seconds:.1f}s")


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
    from osp_core.io.video import check_fps

    _check_paths(latents, output, (".mp4",), overwrite, "latent file")  # before the heavy imports
    if fps is not None:
        check_fps(fps)
    from osp_core.device import dtype_name
    from osp_core.io import from_model_output, write_video
    from osp_core.memory import oom_as_error
    from osp_core.pipelines.video_vae import check_latents_fit, latent_fps, load_latents
    from osp_core.pipelines.video_vae import decode as vae_decode

    data = load_latents(latents)
    rate = fps if fps is not None else (latent_fps(data, latents) or 24.0)
    model = model or data.metadata.get("model") or DEFAULT_MODEL
    # latents saved by `osp t2v sample` record the dtype the video was decoded in: the same
    # dtype gives the sampled frames back (bf16 vs fp32 differ by up to 33 levels)
    folder, dev, dt = _plan(model, device, dtype or data.metadata.get("dtype"))
    shape = check_latents_fit(folder, data.latents, dev, dt, tile)
    vae = _load(folder, dev, dt, tile)
    start = time.perf_counter()
    with progress(transient=True) as bar, oom_as_error(f"decoding {'x'.join(map(str, shape))}", "decode on a device with more memory, with tiling on"):
        task = bar.add_task("decoding", total=vae.num_tiles(data.latents.shape, latent=True))
        video = vae_decode(vae, data.latents, progress=lambda: bar.advance(task))
    seconds = time.perf_counter() - start
    frames = from_model_output(video[0])
    write_video(output, frames, fps=rate)
    summary = {"output": str(output), "frames": frames.shape[0], "height": frames.shape[1], "width": frames.shape[2], "fps": rate, "model": model, "dtype": dtype_name(dt), "seconds": round(seconds, 3)}
    if json_out:
        print_json(summary)
    else:
        err.print(f"wrote {output}: {frames.shape[0]} frames {frames.shape[1]}x{frames.shape[2]} at {rate:g} fps in {seconds:.1f}s")


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
    _check_paths(video, output, (".mp4", ".png"), overwrite, "video")  # before the heavy imports
    from osp_core.errors import InputError
    from osp_core.io import frames_suffix, parse_size, write_frames
    from osp_core.memory import oom_as_error
    from osp_core.pipelines.video_vae import check_clip_fits, reconstruct

    folder, dev, dt = _plan(model, device, dtype)
    shape = check_clip_fits(folder, "recon", video, frames, stride, parse_size(size), dev, dt, tile)
    wanted = frames_suffix(shape[0])  # one frame is an image, as `osp t2v sample` writes it
    if output.suffix.lower() != wanted:
        what = "one frame (an image)" if shape[0] == 1 else f"{shape[0]} frames"
        raise InputError(f"the round trip is {what}, and '{output}' is not a {wanted} file", f"pass -o {output.with_suffix(wanted).name}")
    vae = _load(folder, dev, dt, tile)
    clip = _read(video, frames, stride, size, vae)
    with progress(transient=True) as bar, oom_as_error(f"reconstructing {'x'.join(map(str, shape))}", MEMORY_HINT):
        task = bar.add_task("round trip", total=None)
        result = reconstruct(vae, clip, progress=lambda done, total: bar.update(task, completed=done, total=total))
    write_frames(output, result.frames, fps=clip.fps)
    seconds = result.seconds
    summary = {
        "output": str(output),
        "frames": clip.num_frames,
        "height": clip.size[0],
        "width": clip.size[1],
        "psnr": round(result.psnr, 3),
        "ssim": round(result.ssim, 4),
        "model": model,
        "seconds": round(seconds, 3),
    }
    if json_out:
        print_json(summary)
    else:
        err.print(f"wrote {output}: {clip.num_frames} frames {clip.size[0]}x{clip.size[1]}  PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.4f}  ({seconds:.1f}s)")


app.command("train")(vae_train.train)
