"""Video editing as a library job (`osp edit`, the web page): change what a region shows (an
edited first frame) and how it moves (tracks), keep everything outside it.

`plan_edit(job)` reads and checks every input (video, region, first frame, tracks; LK tracking
for --keep-motion) and resolves the model through `plan_sampling` (repository, version, device,
dtype, memory check) before any weights load. `run_edit(job, progress)` loads the pipeline
through the sampling runner, encodes the source, denoises with the one loop (`denoise`) and a
`RegionBlend` callback (and, with the control engine, the edit control module beside the
transformer), decodes, pastes the source back outside a feathered mask and writes the mp4 and
its JSON sidecar together.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, ModelLoadError
from ..hub import DEFAULT_REPO
from .denoising import DenoisingCallback, DenoisingStep
from .edit_inputs import (
    box_mask,
    frame_size,
    check_box,
    check_tracks,
    feather_width,
    feathered,
    latent_mask,
    load_first_frame,
    load_mask,
    load_track_file,
    parse_box,
    parse_track,
    region_displacement,
    shift,
)
from .t2v_inputs import check_max_steps, fewest_steps

if TYPE_CHECKING:
    from .sampling import SamplingPlan, SamplingProgress

ENGINES = ("auto", "control", "blend")


@dataclass
class EditJob:
    """Everything one edit needs; None means "the default" (see `osp edit --help`)."""

    video: Path
    output: Path
    box: str | None = None
    mask: Path | None = None
    first_frame: Path | None = None
    prompt: str = ""
    tracks: list[str] = field(default_factory=list)
    track_file: Path | None = None
    keep_motion: bool = False
    engine: str = "auto"
    strength: float | None = None  # None: the model's sampling.json edit_strength, else 1
    model: str = DEFAULT_REPO
    frames: str | int | None = None  # None: every frame (must be 4k+1); "auto": longest 4k+1 prefix
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    device: str | None = None
    dtype: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """`InputError` for option values that cannot work, before any file is read."""
        if self.engine not in ENGINES:
            raise InputError(f"unknown --engine '{self.engine}'", "use auto, control or blend")
        if (self.box is None) == (self.mask is None):
            raise InputError("give the region with --box or --mask" if self.box is None else "--box and --mask both give the region", "pass one of --box X0,Y0,X1,Y1 or --mask MASK.png")
        if self.strength is not None and not (math.isfinite(self.strength) and 0 < self.strength <= 1):
            raise InputError(f"--strength must be in (0, 1], got {self.strength}", "pass e.g. --strength 0.25; 1 starts the region from noise")
        if (self.tracks or self.track_file is not None) and self.keep_motion:
            raise InputError("--keep-motion takes the motion from the video, and tracks were given", "pass --track/--track-file or --keep-motion, not both")
        if self.tracks and self.track_file is not None:
            raise InputError("both --track and --track-file were given", "put every track in the file, or pass them all as --track")
        if self.output.suffix.lower() != ".mp4":
            raise InputError(f"output '{self.output}' is not an .mp4 file", "pass -o NAME.mp4")
        if self.steps is not None:
            check_max_steps(self.steps)


@dataclass
class EditInputs:
    """The checked inputs in pixels: source frames (T, H, W, 3) uint8, the region (T, H, W)
    {0, 1}, the edited first frame (H, W, 3) or None, tracks (T, 2) each (x, y) and where
    they came from (track, track-file, keep-motion)."""

    frames: torch.Tensor
    fps: float
    mask: torch.Tensor
    first_frame: torch.Tensor | None
    tracks: list[torch.Tensor]
    track_source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return int(self.frames.shape[0]), int(self.frames.shape[1]), int(self.frames.shape[2])

    @cached_property
    def pixel_displacement(self) -> torch.Tensor:
        """(T, 2) how the region's content moves, in pixels (dx, dy): the tracks' mean motion
        (`region_displacement`), zeros without tracks."""
        return region_displacement(self.tracks, self.mask[0]) if self.tracks else torch.zeros(len(self.frames), 2)

    def reference_first_frame(self) -> torch.Tensor:
        """Frame 0 as it should look: the edited frame inside the region, the source outside."""
        if self.first_frame is None:
            return self.frames[0]
        inside = self.mask[0, ..., None].bool()
        return torch.where(inside, self.first_frame, self.frames[0])


def read_edit_inputs(job: EditJob, spatial_multiple: int = 16) -> EditInputs:
    """Read the video (frames as `osp vae encode`'s --frames), the region, the first frame and
    the tracks, checking each against the video (one-line `InputError`s)."""
    from .video_vae import load_clip

    clip = load_clip(job.video, job.frames, 1, None, compression=(4, 1))
    frames = clip.frames
    count, height, width = (int(v) for v in frames.shape[:3])
    if height % spatial_multiple or width % spatial_multiple:
        fit = frame_size(height // spatial_multiple * spatial_multiple, width // spatial_multiple * spatial_multiple)
        raise InputError(f"the video is {frame_size(height, width)}, not a multiple of {spatial_multiple} pixels", f"crop or resize it (e.g. to {fit}) first")
    if job.box is not None:
        mask = box_mask(check_box(parse_box(job.box), height, width), count, height, width)
    else:
        mask = load_mask(job.mask, count, height, width)
    first = load_first_frame(job.first_frame, height, width) if job.first_frame is not None else None
    if job.tracks:
        tracks, source = [parse_track(text, count) for text in job.tracks], "track"
    elif job.track_file is not None:
        tracks, source = load_track_file(job.track_file, count), "track-file"
    else:
        from .tracking import track_region

        # the default without tracks: the region moves as it does in the source
        tracks, source = track_region(frames, mask[0]), "keep-motion"
    check_tracks(tracks, height, width)
    return EditInputs(frames, clip.fps, mask, first, tracks, source)


@dataclass
class EditPlan:
    """A checked edit: its inputs, the resolved sampling settings, the engine and the strength."""

    job: EditJob
    inputs: EditInputs
    sampling: SamplingPlan
    engine: str
    strength: float

    @property
    def steps_run(self) -> int:
        """The steps the edit runs: the last `strength` of them, at least the scheduler's fewest."""
        return steps_after_cut(self.sampling.steps, self.strength, fewest_steps(self.sampling.scheduler))

    @property
    def sidecar(self) -> Path:
        return self.job.output.with_suffix(".json")


def plan_edit(job: EditJob) -> EditPlan:
    """Check `job`, read its inputs and resolve the model and engine; nothing heavy is loaded."""
    from ..io.paths import check_output
    from .sampling import SamplingJob, plan_sampling

    job.validate()
    sources = [p for p in (job.video, job.mask, job.first_frame, job.track_file) if p is not None]
    check_output(job.output, overwrite=job.overwrite, inputs=sources)
    check_output(job.output.with_suffix(".json"), overwrite=job.overwrite, inputs=sources)
    inputs = read_edit_inputs(job)
    count, height, width = inputs.shape
    sampling = plan_sampling(
        SamplingJob(
            prompts=[job.prompt],
            allow_empty_prompt=True,
            frames=count,
            height=height,
            width=width,
            steps=job.steps,
            guidance=job.guidance,
            seed=job.seed,
            fps=inputs.fps,
            output_dir=job.output.parent,
            model=job.model,
            device=job.device,
            dtype=job.dtype,
        ),
        check_outputs=False,
    )
    from .repository import EDIT_MODULE_FOLDER

    has_module = sampling.repository.has_edit_module
    engine = job.engine
    if engine == "auto":
        engine = "control" if has_module else "blend"
    elif engine == "control" and not has_module:
        raise ModelLoadError(f"'{job.model}' has no edit control module (no {EDIT_MODULE_FOLDER}/config.json)", "use --engine blend (training-free), or train one with `osp edit train`")
    strength = job.strength if job.strength is not None else float(sampling.repository.sampling["edit_strength"])
    plan = EditPlan(job, inputs, sampling, engine, strength)
    asked = steps_after_cut(sampling.steps, strength)
    if plan.steps_run > asked:
        least = fewest_steps(sampling.scheduler)
        named = f"--strength {strength:g}" if job.strength is not None else f"the model's edit strength {strength:g}"
        enough = math.ceil(least / strength)
        fix = f"pass --steps {enough} to keep {strength:g}" if enough <= 10 * sampling.steps else "pass a higher --strength"
        sampling.warnings.append(f"{named} of {sampling.steps} steps is {asked}, and {sampling.scheduler} runs at least {least}: the edit runs {plan.steps_run} (as --strength {plan.steps_run / sampling.steps:.2g}); {fix}")
    return plan


# -- the edit itself (no files) -------------------------------------------------------------


class RegionBlend(DenoisingCallback):
    """The blend engine's step hook. Before every step the known latents (outside the region,
    and the whole first latent frame) are replaced by `known` noised to that step; with
    `from_init` (--strength below 1: the run starts at the cut) the first step starts from
    `init` noised likewise; after the last step the known latents are put back clean, so they
    decode as the source does."""

    def __init__(self, known: torch.Tensor, keep: torch.Tensor, init: torch.Tensor, noise: torch.Tensor, from_init: bool) -> None:
        self.known, self.keep, self.init, self.noise, self.from_init = known, keep, init, noise, from_init

    def _noised(self, x: torch.Tensor, step: DenoisingStep) -> torch.Tensor:
        t = step.timestep if torch.is_tensor(step.timestep) else torch.tensor(step.timestep)
        return step.scheduler.add_noise(x, self.noise.to(x.device), t.reshape(1).to(x.device))

    def on_step_begin(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor:
        if self.from_init and step.is_first:
            latents = self._noised(self.init.to(latents.device), step)
        keep = self.keep.to(latents.device)
        return keep * self._noised(self.known.to(latents.device), step) + (1 - keep) * latents

    def on_step_end(self, step: DenoisingStep, latents: torch.Tensor) -> torch.Tensor | None:
        if not step.is_last:
            return None
        keep = self.keep.to(latents.device)
        return keep * self.known.to(latents.device) + (1 - keep) * latents


@dataclass
class EditLatents:
    """The latent-space picture of an edit (scaled latents, (1, C, t, h, w))."""

    source: torch.Tensor  # the source video
    known: torch.Tensor  # the source with the first latent frame as the edited first frame
    keep: torch.Tensor  # (1, 1, t, h, w): 1 where the latents are known
    region: torch.Tensor  # (t, h, w): 1 inside the region
    displacement: torch.Tensor  # (t, 2) how the region's content moves, in latent cells (dx, dy)
    guide: torch.Tensor | None = None  # `motion_guide` encoded: where --strength < 1 starts


def prepare_latents(vae: Any, inputs: EditInputs, guide: bool = False) -> EditLatents:
    """Encode the source and the reference first frame; the latent region and motion; with
    `guide`, the motion guide too (one more encode, only needed for --strength < 1)."""
    from ..io import to_model_input
    from .video_vae import encode

    scale = float(vae.config.scaling_factor)
    source = encode(vae, to_model_input(inputs.frames)) * scale
    known = source.clone()
    if inputs.first_frame is not None:
        # the video with its first frame edited, encoded whole as the source was (the encoder's
        # first latent frame is not quite the first frame encoded alone)
        reference = inputs.frames.clone()
        reference[0] = inputs.reference_first_frame()
        known[:, :, :1] = encode(vae, to_model_input(reference))[:, :, :1] * scale
    temporal, spatial = vae.temporal_compression, vae.spatial_compression
    region = latent_mask(inputs.mask, temporal, spatial)
    keep = (1 - region)[None, None].clone()
    keep[:, :, 0] = 1.0  # the first latent frame is held as the (edited) first frame
    pixel = inputs.pixel_displacement
    # latent frame i stands for pixel frames 4i-3 .. 4i: their mean motion
    per_latent = [pixel[:1].mean(dim=0)] + [pixel[max(1, 4 * i - 3) : 4 * i + 1].mean(dim=0) for i in range(1, source.shape[2])]
    displacement = torch.stack(per_latent) / spatial
    guided = encode(vae, to_model_input(motion_guide(inputs))) * scale if guide else None
    return EditLatents(source, known, keep, region, displacement, guided)


def motion_guide(inputs: EditInputs) -> torch.Tensor:
    """(T, H, W, 3) uint8: the source, with the region of every frame showing the reference
    first frame's region moved along the tracks (sub-pixel, in pixels: the latent grid is too
    coarse to move content by less than a cell); what the move uncovers takes the region's
    median colour. A guide for `--strength` below 1, not a result: the denoiser redraws it."""
    first = inputs.reference_first_frame().permute(2, 0, 1).float()  # (3, H, W)
    mask0 = inputs.mask[0].float()
    inside0 = mask0.bool()
    fill = first[:, inside0].median(dim=1).values[:, None, None] if bool(inside0.any()) else torch.zeros(3, 1, 1)
    frames = []
    for dx, dy in inputs.pixel_displacement.tolist():
        moved, coverage = shift(first * mask0, dx, dy), shift(mask0, dx, dy)
        frames.append(moved + (1 - coverage) * fill)
    guide = torch.stack(frames).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return torch.where(inputs.mask[..., None].bool(), guide, inputs.frames)


def noise_along(noise: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, t, h, w): `noise` rolled by each latent frame's displacement,
    rounded to whole cells (noise keeps unit variance only when copied cell for cell)."""
    return torch.stack([torch.roll(noise, shifts=(round(dy), round(dx)), dims=(-2, -1)) for dx, dy in displacement.tolist()], dim=2)


def blend_start_latents(latents: EditLatents, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial latents, noise): the motion guide inside the region (the source elsewhere),
    and noise whose region part moves along the path (content that follows its noise follows
    the path)."""
    region = latents.region[None, None].to(latents.source.dtype)
    init = latents.source if latents.guide is None else region * latents.guide + (1 - region) * latents.source
    base = torch.randn(latents.source.shape, generator=generator)
    moving = noise_along(base[:, :, 0], latents.displacement)
    noise = region * moving + (1 - region) * base
    noise[:, :, 0] = base[:, :, 0]
    return init, noise


def edit_latents(
    pipe: Any,
    latents: EditLatents,
    prompt_embeds: Any,
    steps: int,
    guidance: float,
    strength: float,
    generator: torch.Generator,
    callbacks: list[DenoisingCallback] | None = None,
    transformer_forward: Any = None,
) -> torch.Tensor:
    """Denoise an edit with `pipe` (a T2VPipeline, models placed): the final scaled latents.
    Below strength 1 only the last `steps_after_cut` steps run, from the motion guide noised
    to the first of them. `transformer_forward` replaces the transformer call (the control
    engine)."""
    first = steps - steps_after_cut(steps, strength, fewest_steps(pipe.scheduler))
    if first > 0 and latents.guide is None:
        raise ValueError("strength < 1 starts from the motion guide: prepare_latents(..., guide=True)")
    init, noise = blend_start_latents(latents, generator)
    blend = RegionBlend(latents.known, latents.keep, init, noise, from_init=first > 0)
    _, _, t, h, w = latents.source.shape
    vae = pipe.vae
    return pipe(
        prompt_embeds=prompt_embeds,
        num_frames=(t - 1) * vae.temporal_compression + 1,
        height=h * vae.spatial_compression,
        width=w * vae.spatial_compression,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        output_type="latent",
        enable_temporal_attentions=t > 1,
        callbacks=[blend, *(callbacks or [])],
        transformer_forward=transformer_forward,
        first_step=first,
    ).frames


def steps_after_cut(steps: int, strength: float, fewest: int = 1) -> int:
    """How many of `steps` an edit at `strength` runs: the last round(steps * strength)
    (image-to-image's strength), at least `fewest` (the scheduler's; one) and at most all."""
    return steps if strength >= 1 else min(steps, max(fewest, 1, round(steps * strength)))


def control_conditions(latents: EditLatents, inputs: EditInputs, temporal: int = 4, spatial: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The control module's (content, motion, region) for one edit, batch 1: the known latents
    with the region blanked (the first latent frame is the edited one), the tracks' motion maps
    and the latent region."""
    from ..models.edit_control import motion_maps

    content = latents.known * latents.keep
    count, height, width = inputs.shape
    tracks = torch.stack(inputs.tracks) if inputs.tracks else torch.zeros(0, count, 2)
    motion = motion_maps(tracks.float(), height, width, temporal, spatial)[None]
    return content, motion, latents.region[None, None].to(content.dtype)


def control_forward(transformer: Any, module: Any, latents: EditLatents, inputs: EditInputs) -> Any:
    """A stand-in for `transformer` (called like `LatteT2V.forward`) that adds `module`'s control."""
    device = transformer.device
    content, motion, region = (x.to(device) for x in control_conditions(latents, inputs, 4, int(module.config.spatial_compression)))

    def forward(hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None, enable_temporal_attentions: bool = True, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (module(transformer, hidden_states, timestep, encoder_hidden_states, content, motion, region, encoder_attention_mask, enable_temporal_attentions),)

    return forward


def load_control_module(folder: Path, transformer: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """The EditControl in `folder` (a diffusers-style folder), checked against `transformer`."""
    from ..models.edit_control import EditControl

    try:
        module = EditControl.from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds for bad folders
        raise ModelLoadError(f"cannot load the edit control module from '{folder}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", "pass a folder written by `osp edit train`") from None
    width = module.config.num_attention_heads * module.config.attention_head_dim
    expected = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    if width != expected or module.config.num_layers > transformer.config.num_layers:
        raise ModelLoadError(f"the edit control module in '{folder}' was made for another transformer (width {width}, {module.config.num_layers} pairs)", "train one for this model with `osp edit train`")
    return module.to(device).eval()


def paste_outside(decoded: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3): `decoded` inside the feathered region, `source` exactly outside."""
    soft = feathered(mask, feather_width(*mask.shape[1:]))[..., None]
    mixed = soft * decoded.float() + (1 - soft) * source.float()
    return mixed.round().clamp(0, 255).to(torch.uint8)


# -- the run --------------------------------------------------------------------------------


@dataclass
class EditSummary:
    """What an edit wrote: the sidecar's content plus absolute paths, and the result frames."""

    record: dict[str, Any]
    frames: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return self.record


def run_edit(job: EditJob | EditPlan, progress: SamplingProgress | None = None) -> EditSummary:
    """Plan (unless given a plan), load, edit, decode, paste back and write the mp4 + sidecar.
    A failed run leaves no file and no folder it created."""
    from .sampling import NoProgress, output_folder

    plan = job if isinstance(job, EditPlan) else plan_edit(job)
    progress = progress or NoProgress()
    with output_folder(plan.job.output.parent, plan.sampling.warnings, progress):
        return _edit(plan, progress)


def _edit(plan: EditPlan, progress: SamplingProgress) -> EditSummary:
    import osp_core

    from ..io import json_dumps, write_video
    from ..io.outputs import FileGroup
    from ..memory import oom_as_error
    from .denoising import StepProgress
    from .sampling import SamplingRun

    job, inputs, sampling = plan.job, plan.inputs, plan.sampling
    started = time.perf_counter()
    run = SamplingRun(sampling, progress)
    pipe, embeddings = run.load()
    transformer_forward, control_dir = None, None
    if plan.engine == "control":
        progress.status("loading the edit control module ...")
        control_dir = sampling.repository.fetch_edit_module()
        module = load_control_module(control_dir, pipe.transformer, sampling.device, sampling.dtype)
    seconds_load = time.perf_counter() - started
    with oom_as_error("editing", "edit fewer --frames, or a smaller video"):
        t0 = time.perf_counter()
        progress.status("encoding the source video ...")
        latents = prepare_latents(pipe.vae, inputs, guide=plan.strength < 1)
        if plan.engine == "control":
            transformer_forward = control_forward(pipe.transformer, module, latents, inputs)
        seconds_encode = time.perf_counter() - t0
        progress.video(0, 1, job.prompt or "(no prompt)")
        t0 = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(sampling.seed)
        final = edit_latents(pipe, latents, embeddings[0], sampling.steps, sampling.guidance, plan.strength, generator, [StepProgress(progress.step)], transformer_forward)
        seconds_denoise = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = pipe.decode_latents(final)[0]
        frames = paste_outside(decoded, inputs.frames, inputs.mask)
        seconds_decode = time.perf_counter() - t0

    count, height, width = inputs.shape
    def beside(path: Path) -> str:
        # inputs are recorded relative to the sidecar's folder: `osp eval edit` finds them from
        # any working directory, and the folder can move with them
        return os.path.relpath(Path(path).resolve(), job.output.parent.resolve())

    region: dict[str, Any] = {"box": [int(v) for v in parse_box(job.box)]} if job.box is not None else {"mask": beside(job.mask)}
    region["pixels_first_frame"] = int(inputs.mask[0].sum())
    record: dict[str, Any] = {
        "source": beside(job.video),
        "video": job.output.name,
        "region": region,
        "first_frame": None if job.first_frame is None else beside(job.first_frame),
        "prompt": job.prompt,
        "tracks": [[[round(float(x), 3), round(float(y), 3)] for x, y in track.tolist()] for track in inputs.tracks],
        "track_source": inputs.track_source,
        "engine": plan.engine,
        "strength": plan.strength,
        "steps_run": plan.steps_run,
        "seed": sampling.seed,
        "num_frames": count,
        "size": [height, width],
        "fps": inputs.fps,
        "settings": run.settings(pipe, None),
        "models": {"model": job.model, "version": sampling.version, "edit": None if control_dir is None else str(control_dir)},
        "seconds": {"load": round(seconds_load, 3), "encode": round(seconds_encode, 3), "denoise": round(seconds_denoise, 3), "decode": round(seconds_decode, 3)},
        "osp_version": osp_core.__version__,
    }
    paths = [job.output, plan.sidecar]
    with FileGroup(paths, overwrite=job.overwrite, rename_hint="choose another -o") as group:
        write_video(group.path(job.output), frames, fps=inputs.fps)
        group.path(plan.sidecar).write_text(json_dumps(record, indent=2) + "\n", encoding="utf-8")
        group.commit()
    record = {**record, "video": str(job.output.absolute()), "sidecar": str(plan.sidecar.absolute())}
    return EditSummary(record, frames)
