"""VAE jobs: `encode` a video to latents, `decode` latents to a video, and `recon`, the round
trip with its PSNR and SSIM. `plan_vae(job)` checks the paths, the device and whether the clip
fits in memory, with no weights loaded (and no torch imported before the path checks pass);
`run_vae(plan, progress)` loads the VAE (or takes it from a `VaeCache`), runs and writes.
`osp vae` and the web page both run these.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..hub import DEFAULT_REPO
from .progress import StepsProgress

if TYPE_CHECKING:
    import torch

KINDS = ("encode", "decode", "recon")
# what each job reads and the suffixes its output may have
_SOURCE = {"encode": "video", "decode": "latent file", "recon": "video"}
_SUFFIXES = {"encode": (".safetensors",), "decode": (".mp4",), "recon": (".mp4", ".png")}
MEMORY_HINT = "pass a smaller --size or fewer --frames"


@dataclass
class VaeJob:
    """One VAE job (see `osp vae encode|decode|recon --help` for the options). `output` is the
    file to write; with `output_dir` instead (the web page), a round trip writes
    `<source>-recon.mp4` (a .png for one frame) and a JSON sidecar there."""

    kind: str
    source: Path
    output: Path | None = None
    output_dir: Path | None = None
    model: str | None = DEFAULT_REPO  # decode: None takes the model recorded in the latent file
    frames: str | None = None
    stride: int = 1
    size: str | None = None
    tile: bool | None = None
    sample: bool = False  # encode: a posterior sample instead of its mean
    seed: int = 0
    fps: float | None = None  # decode: None takes the latent file's, else 24
    overwrite: bool = False
    device: str | None = None
    dtype: str | None = None
    memory_hint: str = MEMORY_HINT  # how the user makes a clip that does not fit smaller


@dataclass
class VaePlan:
    """A checked VAE job: the VAE folder, device, dtype, the clip's (frames, height, width) and,
    for decode, the latents read from their file."""

    job: VaeJob
    output: Path
    sidecar: Path | None
    folder: Path
    device: torch.device
    dtype: torch.dtype
    shape: tuple[int, int, int]
    model: str
    latents: Any = None  # decode: the `LatentFile`
    fps: float | None = None  # decode: the mp4's rate


@dataclass
class VaeSummary:
    """What a VAE job wrote: the CLI's JSON summary (`record`), the files, the clip's frames
    and size, and for a round trip its scores."""

    record: dict[str, Any]
    output: Path
    sidecar: Path | None
    frames: int
    size: tuple[int, int]
    psnr: float | None = None
    ssim: float | None = None


class VaeCache:
    """The last loaded VAE (by folder, device and dtype), kept for the next job of a long-lived
    caller (the web page); loading another frees it first."""

    def __init__(self) -> None:
        self.held: tuple[tuple[str, ...], Any] | None = None

    def get(self, folder: Path, device: Any, dtype: Any, load: Callable[[], Any]) -> Any:
        key = (str(folder), str(device), str(dtype))
        if self.held is None or self.held[0] != key:
            self.held = None  # free the previous one first
            self.held = (key, load())
        return self.held[1]


def check_paths(source: Path, output: Path, suffixes: tuple[str, ...], overwrite: bool, what: str) -> None:
    """Fail on bad paths before spending seconds on loading a model."""
    from ..io.media import IMAGE_SUFFIXES
    from ..io.paths import check_input_file, check_output

    check_input_file(source, what)
    if output.suffix.lower() not in suffixes:
        # an image round-trips to an image
        suggested = ".png" if ".png" in suffixes and source.suffix.lower() in IMAGE_SUFFIXES else suffixes[0]
        raise InputError(f"output '{output}' must end in {' or '.join(suffixes)}", f"e.g. -o {output.with_suffix(suggested).name}")
    check_output(output, overwrite=overwrite, inputs=[source])


def plan_vae(job: VaeJob) -> VaePlan:
    """Check `job` (paths first, then the device, the VAE and the memory the clip needs)."""
    from ..io.media import frames_suffix

    if job.kind not in KINDS:
        raise ValueError(f"unknown VAE job '{job.kind}'")
    if job.output is not None:
        check_paths(job.source, job.output, _SUFFIXES[job.kind], job.overwrite, _SOURCE[job.kind])
    if job.fps is not None:
        from ..io.video import check_fps

        check_fps(job.fps)
    from ..device import check_device_name, check_dtype_name
    from ..pipelines.vae_inputs import check_clip, find_vae
    from .records import latent_fps, load_latents

    latents, fps, model, dtype = None, None, job.model or DEFAULT_REPO, job.dtype
    if job.kind == "decode":
        latents = load_latents(job.source)
        fps = job.fps if job.fps is not None else (latent_fps(latents, job.source) or 24.0)
        model = job.model or latents.metadata.get("model") or DEFAULT_REPO
        # latents saved by `osp t2v sample` record the dtype the video was decoded in: the same
        # dtype gives the sampled frames back (bf16 vs fp32 differ by up to 33 levels)
        dtype = dtype or latents.metadata.get("dtype")
    # names, the VAE and the clip's frames and size first: their refusals come before torch loads
    check_device_name(job.device)
    check_dtype_name(dtype)
    folder = find_vae(model)
    if job.kind != "decode":
        shape = check_clip(folder, job.source, job.frames, job.stride, _size(job.size))
    from ..device import resolve
    from ..pipelines.video_vae import check_clip_fits, check_latents_fit

    device, torch_dtype = resolve(job.device, dtype)
    if job.kind == "decode":
        shape = check_latents_fit(folder, latents.latents, device, torch_dtype, job.tile)
    else:
        check_clip_fits(folder, job.kind, shape, device, torch_dtype, job.tile)
    output, sidecar = job.output, None
    if job.kind == "recon":
        wanted = frames_suffix(shape[0])  # one frame is an image, as `osp t2v sample` writes it
        if output is None:
            from .sampling_plan import slugify

            stem = slugify(job.source.stem)
            output, sidecar = job.output_dir / f"{stem}-recon{wanted}", job.output_dir / f"{stem}-recon.json"
        elif output.suffix.lower() != wanted:
            what = "one frame (an image)" if shape[0] == 1 else f"{shape[0]} frames"
            raise InputError(f"the round trip is {what}, and '{output}' is not a {wanted} file", f"pass -o {output.with_suffix(wanted).name}")
    return VaePlan(job, output, sidecar, folder, device, torch_dtype, shape, model, latents, fps)


def run_vae(plan: VaePlan, progress: StepsProgress | None = None, vaes: VaeCache | None = None) -> VaeSummary:
    """Load the VAE (kept in `vaes` when given), run the job and write its output; `progress`
    hears `status` while loading and `step(done, total)` after every tile."""
    from ..pipelines.video_vae import configure_tiling, load_vae
    from .progress import NoProgress

    progress = progress or NoProgress()
    progress.status(f"loading VAE from {plan.folder}")
    vae = vaes.get(plan.folder, plan.device, plan.dtype, lambda: load_vae(plan.folder, plan.device, plan.dtype)) if vaes is not None else load_vae(plan.folder, plan.device, plan.dtype)
    configure_tiling(vae, plan.job.tile)
    return {"encode": _encode, "decode": _decode, "recon": _recon}[plan.job.kind](plan, vae, progress)


def _counter(progress: StepsProgress, total: int) -> Callable[[], None]:
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress.step(done, total)

    return tick


def _size(size: str | None) -> tuple[int, int] | None:
    """--size as (H, W), None without one."""
    if size is None:
        return None
    from ..io import parse_size

    return parse_size(size)


def _read_clip(plan: VaePlan, vae: Any) -> Any:
    from ..pipelines.video_vae import load_clip

    job = plan.job
    return load_clip(job.source, job.frames, job.stride, _size(job.size), (vae.temporal_compression, vae.spatial_compression))


def _encode(plan: VaePlan, vae: Any, progress: StepsProgress) -> VaeSummary:
    import torch

    from ..io.video import to_model_input
    from ..memory import oom_as_error
    from ..pipelines.video_vae import encode
    from .records import latents_header, save_latents

    job = plan.job
    clip = _read_clip(plan, vae)
    x = to_model_input(clip.frames)
    start = time.perf_counter()
    with oom_as_error(f"encoding {'x'.join(map(str, plan.shape))}", job.memory_hint):
        generator = torch.Generator(plan.device).manual_seed(job.seed) if job.sample else None
        latents = encode(vae, x, sample=job.sample, generator=generator, progress=_counter(progress, vae.num_tiles(x.shape, latent=False)))
    seconds = time.perf_counter() - start
    meta = latents_header(clip.fps, clip.num_frames, clip.size[0], clip.size[1], vae.config.scaling_factor, plan.model, source=str(job.source), posterior="sample" if job.sample else "mean")
    save_latents(plan.output, latents, meta)
    record = {"output": str(plan.output), "latent_shape": list(latents.shape), "seconds": round(seconds, 3), **meta}
    return VaeSummary(record, plan.output, None, clip.num_frames, clip.size)


def _decode(plan: VaePlan, vae: Any, progress: StepsProgress) -> VaeSummary:
    from ..device import dtype_name
    from ..io.video import from_model_output, write_video
    from ..memory import oom_as_error
    from ..pipelines.video_vae import decode

    latents = plan.latents.latents
    start = time.perf_counter()
    with oom_as_error(f"decoding {'x'.join(map(str, plan.shape))}", "decode on a device with more memory, with tiling on"):
        video = decode(vae, latents, progress=_counter(progress, vae.num_tiles(latents.shape, latent=True)))
    seconds = time.perf_counter() - start
    frames = from_model_output(video[0])
    write_video(plan.output, frames, fps=plan.fps)
    record = {"output": str(plan.output), "frames": frames.shape[0], "height": frames.shape[1], "width": frames.shape[2], "fps": plan.fps, "model": plan.model, "dtype": dtype_name(plan.dtype), "seconds": round(seconds, 3)}
    return VaeSummary(record, plan.output, None, int(frames.shape[0]), (int(frames.shape[1]), int(frames.shape[2])))


def _recon(plan: VaePlan, vae: Any, progress: StepsProgress) -> VaeSummary:
    from ..io.video import write_frames
    from ..memory import oom_as_error
    from ..pipelines.video_vae import reconstruct
    from .records import recon_sidecar, write_video_files

    clip = _read_clip(plan, vae)
    with oom_as_error(f"reconstructing {'x'.join(map(str, plan.shape))}", plan.job.memory_hint):
        result = reconstruct(vae, clip, progress=progress.step)
    if plan.sidecar is None:
        write_frames(plan.output, result.frames, fps=clip.fps)
    else:
        record = recon_sidecar(plan.job.source.name, plan.model, clip.num_frames, clip.size, result.psnr, result.ssim, result.seconds)
        write_video_files(plan.output, result.frames, clip.fps, plan.sidecar, record)
    summary = {
        "output": str(plan.output),
        "frames": clip.num_frames,
        "height": clip.size[0],
        "width": clip.size[1],
        "psnr": round(result.psnr, 3),
        "ssim": round(result.ssim, 4),
        "model": plan.model,
        "seconds": round(result.seconds, 3),
    }
    return VaeSummary(summary, plan.output, plan.sidecar, clip.num_frames, clip.size, result.psnr, result.ssim)
