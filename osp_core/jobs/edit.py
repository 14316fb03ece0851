"""Video editing as a job (`osp edit`, the web page): change what a region shows (an edited
first frame) and how it moves (tracks), keep everything outside it; or, with `whole_frame`,
re-render the whole clip from its own latents under a new prompt (a remix, SDEdit).

`plan_edit(job)` reads and checks every input (video, region, first frame, tracks; LK tracking
for --keep-motion) and resolves the model through `plan_sampling` (repository, version, device,
dtype, memory check) before any weights load. `run_edit(plan, progress)` loads the pipeline
through the sampling runner, encodes the source, denoises with the one loop and a `RegionBlend`
callback (and, with the control engine, the edit control module beside the transformer),
decodes, pastes the source back outside a feathered mask and writes the mp4 and its JSON
sidecar together (`records`). Torch loads once the options are checked.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelLoadError
from ..hub import DEFAULT_REPO
from ..pipelines.edit_inputs import parse_box
from ..pipelines.t2v_inputs import BLOCK_STACK_CACHES, check_max_steps, fewest_steps
from .progress import NoProgress, SamplingProgress
from .records import edit_sidecar, write_video_files
from .sampling import SamplingRun, output_folder
from .sampling_plan import SamplingJob, SamplingPlan, check_speed_options, interval_of, plan_sampling

if TYPE_CHECKING:
    import torch

    from ..pipelines.edit import EditInputs


ENGINES = ("auto", "control", "blend")
REMIX_STRENGTH = 0.6  # a whole-frame edit's unset --strength: the new prompt shows, the source's layout stays


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
    whole_frame: bool = False  # a remix: the whole video re-rendered from its latents with `prompt`
    lora: list[Any] = field(default_factory=list)  # LoRA adapters, as `SamplingJob.lora`
    # how the denoising skips work, as `SamplingJob`'s (None: the speed profile's, else none)
    cache: str | None = None
    cache_threshold: float | None = None
    guidance_interval: str | None = None
    speed: str | None = None

    def validate(self) -> None:
        """`InputError` for option values that cannot work, before any file is read."""
        if self.engine not in ENGINES:
            raise InputError(f"unknown --engine '{self.engine}'", "use auto, control or blend")
        if self.whole_frame:
            self._validate_whole_frame()
        elif (self.box is None) == (self.mask is None):
            raise InputError("give the region with --box or --mask" if self.box is None else "--box and --mask both give the region", "pass one of --box X0,Y0,X1,Y1 or --mask MASK.png")
        if self.strength is not None and not (math.isfinite(self.strength) and 0 < self.strength <= 1):
            starts = "the whole video" if self.whole_frame else "the region"
            raise InputError(f"--strength must be in (0, 1], got {self.strength}", f"pass e.g. --strength {REMIX_STRENGTH if self.whole_frame else 0.25}; 1 starts {starts} from noise")
        if (self.tracks or self.track_file is not None) and self.keep_motion:
            raise InputError("--keep-motion takes the motion from the video, and tracks were given", "pass --track/--track-file or --keep-motion, not both")
        if self.tracks and self.track_file is not None:
            raise InputError("both --track and --track-file were given", "put every track in the file, or pass them all as --track")
        if self.output.suffix.lower() != ".mp4":
            raise InputError(f"output '{self.output}' is not an .mp4 file", "pass -o NAME.mp4")
        if self.steps is not None:
            check_max_steps(self.steps)
        if self.box is not None:
            parse_box(self.box)  # its text now; against the frame once the video is read
        check_speed_options(self.speed, self.cache, self.cache_threshold)
        interval_of(self.guidance_interval)

    def _validate_whole_frame(self) -> None:
        held = [flag for flag, given in (("--box", self.box is not None), ("--mask", self.mask is not None), ("--first-frame", self.first_frame is not None), ("--track", bool(self.tracks)), ("--track-file", self.track_file is not None), ("--keep-motion", self.keep_motion)) if given]
        if held:
            raise InputError(f"--whole-frame re-renders every pixel and holds nothing, and {', '.join(held)} {'was' if len(held) == 1 else 'were'} given", "leave out --whole-frame to edit a region, or drop " + ", ".join(held))
        if self.engine == "control":
            raise InputError("--engine control edits a region, and --whole-frame was given", "pass --engine blend or auto with --whole-frame")
        if not self.prompt.strip():
            raise InputError("--whole-frame needs a --prompt (the new description of the video)", 'pass --prompt "..."')



def read_edit_inputs(job: EditJob, spatial_multiple: int = 16) -> EditInputs:
    """Read the video (frames as `osp vae encode`'s --frames), the region, the first frame and
    the tracks, checking each against the video (one-line `InputError`s)."""
    from ..pipelines.edit import EditInputs
    from ..pipelines.edit_inputs import (
        box_mask,
        check_box,
        check_tracks,
        frame_size,
        load_first_frame,
        load_mask,
        load_track_file,
        parse_track,
    )
    from ..pipelines.video_vae import load_clip

    clip = load_clip(job.video, job.frames, 1, None, compression=(4, 1))
    frames = clip.frames
    count, height, width = (int(v) for v in frames.shape[:3])
    if height % spatial_multiple or width % spatial_multiple:
        fit = frame_size(height // spatial_multiple * spatial_multiple, width // spatial_multiple * spatial_multiple)
        raise InputError(f"the video is {frame_size(height, width)}, not a multiple of {spatial_multiple} pixels", f"crop or resize it (e.g. to {fit}) first")
    if job.whole_frame:
        import torch

        return EditInputs(frames, clip.fps, torch.ones(count, height, width), None, [], "whole-frame", whole_frame=True)
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
        from ..pipelines.tracking import track_region

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
        from ..pipelines.edit_inputs import edit_steps

        return edit_steps(self.sampling.steps, self.strength, self.sampling.scheduler)

    @property
    def sidecar(self) -> Path:
        return self.job.output.with_suffix(".json")


def plan_edit(job: EditJob) -> EditPlan:
    """Check `job`, read its inputs and resolve the model and engine; nothing heavy is loaded."""
    from ..io.paths import check_output

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
            lora=list(job.lora),
            cache=job.cache,
            cache_threshold=job.cache_threshold,
            guidance_interval=job.guidance_interval,
            speed=job.speed,
        ),
        check_outputs=False,
    )
    from ..pipelines.repository import EDIT_MODULE_FOLDER

    has_module = sampling.repository.has_edit_module
    engine = job.engine
    if engine == "auto":
        engine = "control" if has_module and not job.whole_frame else "blend"
    elif engine == "control" and not has_module:
        raise ModelLoadError(f"'{job.model}' has no edit control module (no {EDIT_MODULE_FOLDER}/config.json)", "use --engine blend (training-free), or train one with `osp edit train`")
    if engine == "control" and sampling.cache in BLOCK_STACK_CACHES:
        # the control module runs the transformer's blocks itself, past the hook these caches skip them in
        if job.cache is not None:
            raise InputError(f"--cache {sampling.cache} cannot run with the control engine: it runs the transformer's blocks itself", "pass --engine blend, or --cache pab or fastercache")
        sampling.warnings.append(f"--speed {sampling.speed}'s cache {sampling.cache} cannot run with the control engine (it runs the transformer's blocks itself): editing without it")
        sampling.cache, sampling.cache_threshold = "none", None
    if job.strength is not None:
        strength = job.strength
    else:
        # the model's edit_strength is tuned for region edits (the first frame held): a remix holds nothing
        strength = REMIX_STRENGTH if job.whole_frame else float(sampling.repository.sampling["edit_strength"])
    plan = EditPlan(job, inputs, sampling, engine, strength)
    named = f"--strength {strength:g}" if job.strength is not None else f"the whole-frame edit strength {strength:g}" if job.whole_frame else f"the model's edit strength {strength:g}"
    note = strength_not_kept(sampling.steps, strength, sampling.scheduler, named)
    if note is not None:
        sampling.warnings.append(note)
    return plan


def strength_not_kept(steps: int, strength: float, scheduler: str, named: str, flag: str = "--") -> str | None:
    """Why an edit at `strength` of `steps` runs more steps than the strength keeps (the
    scheduler's fewest), and the step count that keeps it; None when it is kept. `flag` prefixes
    the option names (the CLI's --steps, the API's steps)."""
    from ..pipelines.edit_inputs import edit_steps, steps_after_cut

    asked, runs = steps_after_cut(steps, strength), edit_steps(steps, strength, scheduler)
    if runs <= asked:
        return None
    least = fewest_steps(scheduler)
    enough = math.ceil(least / strength)
    fix = f"pass {flag}steps {enough} to keep {strength:g}" if enough <= 10 * steps else f"pass a higher {flag}strength"
    return f"{named} keeps {asked} of the {steps} steps, and {scheduler} runs at least {least}: the edit runs {runs} (as {flag}strength {runs / steps:.2g}); {fix}"


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
    plan = job if isinstance(job, EditPlan) else plan_edit(job)
    progress = progress or NoProgress()
    with output_folder(plan.job.output.parent, plan.sampling.warnings, progress):
        return _edit(plan, progress)


def _edit(plan: EditPlan, progress: SamplingProgress) -> EditSummary:
    import torch

    from ..memory import oom_as_error
    from ..pipelines.caching import make_cache
    from ..pipelines.denoising import StepProgress
    from ..pipelines.edit import (
        control_forward,
        edit_latents,
        load_control_module,
        paste_outside,
        prepare_latents,
    )
    from ..pipelines.edit_inputs import parse_box

    job, inputs, sampling = plan.job, plan.inputs, plan.sampling
    started = time.perf_counter()
    run = SamplingRun(sampling, progress)
    pipe, embeddings = run.load()
    cache = make_cache(sampling.cache, sampling.cache_threshold, sampling.repository.sampling)
    interval = run.guidance_interval()  # steps outside it run the conditional half alone
    callbacks = [c for c in (cache, interval) if c is not None]
    transformer_forward, control_dir = None, None
    if plan.engine == "control":
        progress.status("loading the edit control module ...")
        control_dir = sampling.repository.fetch_edit_module()
        module = load_control_module(control_dir, pipe.transformer, sampling.device, sampling.dtype)
    seconds_text = sum(run.seconds_encode.values())
    seconds_load = time.perf_counter() - started - seconds_text  # models and the control module
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
        if cache is not None:
            cache.attach(pipe.transformer)
        try:
            final = edit_latents(pipe, latents, embeddings[0], sampling.steps, sampling.guidance, plan.strength, generator, [*callbacks, StepProgress(progress.step)], transformer_forward)
        finally:
            if cache is not None:
                cache.detach()
        seconds_denoise = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = pipe.decode_latents(final)[0]
        # a whole-frame edit has no outside: the decoded frames are the result
        frames = decoded if inputs.whole_frame else paste_outside(decoded, inputs.frames, inputs.mask)
        seconds_decode = time.perf_counter() - t0

    count, height, width = inputs.shape

    def beside(path: Path) -> str:
        # inputs are recorded relative to the sidecar's folder: `osp eval edit` finds them from
        # any working directory, and the folder can move with them
        return os.path.relpath(Path(path).resolve(), job.output.parent.resolve())

    region: dict[str, Any]
    if job.whole_frame:
        region = {"whole_frame": True}
    else:
        region = {"box": [int(v) for v in parse_box(job.box)]} if job.box is not None else {"mask": beside(job.mask)}
    region["pixels_first_frame"] = int(inputs.mask[0].sum())
    fields: dict[str, Any] = {
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
        "strength_run": round(plan.steps_run / sampling.steps, 4),  # what ran when the scheduler needs more steps than `strength` keeps
        "seed": sampling.seed,
        "num_frames": count,
        "size": [height, width],
        "fps": inputs.fps,
        "settings": run.settings(pipe, cache, interval),
        "models": {"model": job.model, "version": sampling.version, "edit": None if control_dir is None else str(control_dir), **({"lora": [a.describe() for a in sampling.adapters]} if sampling.adapters else {})},
    }
    phases = {"load": seconds_load, "text_encoder": seconds_text, "encode": seconds_encode, "denoise": seconds_denoise, "decode": seconds_decode}
    record = edit_sidecar(fields, {phase: round(value, 3) for phase, value in phases.items()})
    write_video_files(job.output, frames, inputs.fps, plan.sidecar, record, overwrite=job.overwrite, rename_hint="choose another -o")
    # the summary gives absolute paths (the sidecar names files relative to itself) and the whole run's seconds
    seconds = {**record["seconds"], "total": round(time.perf_counter() - started, 3)}
    record = {**record, "source": str(Path(job.video).absolute()), "video": str(job.output.absolute()), "sidecar": str(plan.sidecar.absolute()), "seconds": seconds}
    return EditSummary(record, frames)
