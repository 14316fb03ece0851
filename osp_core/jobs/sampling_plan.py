"""Planning a text-to-video sampling run: `plan_sampling(job)` checks everything that can be
checked before weights load (sizes, names, the model repository, the T5 location, the attention
backend, the cache, existing outputs, memory) and resolves every unset setting from the model.

Nothing here imports torch at module level: the CLI plans (and refuses) without it.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..device import attention_name, check_device_name, check_dtype_name
from ..errors import InputError
from ..hub import DEFAULT_REPO
from ..io.media import frames_suffix
from ..parallel.launch import SINGLE_PROCESS, resolve_parallel
from ..pipelines.lora_inputs import AdapterSpec, check_adapters, parse_adapter_spec
from ..parallel.layout import ParallelLayout, launched_world, rank_device
from ..pipelines.repository import ModelRepository, check_transformer_folder, model_sizes, read_t5_config
from ..pipelines.t2v_inputs import (
    SpeedChoice,
    T5Location,
    check_cache_for_model,
    check_cache_options,
    check_cache_threshold,
    check_clean_caption_deps,
    check_max_steps,
    check_speed_name,
    check_steps,
    check_video_size,
    parse_guidance_interval,
    parse_version,
    prompt_lines,
    read_prompt_file,
    resolve_speed,
    scheduler_name,
    version_size,
)
from .progress import quiet_libraries
from .records import LATENTS_SUFFIX

if TYPE_CHECKING:
    import torch

DEFAULT_OUTPUT = Path("samples/t2v")
SLUG_CHARS = 48
MAX_SEED = 2**63


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from the arguments (joined into one), or one per non-blank line of a file
    ('-' = stdin)."""
    if prompts and prompts_file:
        raise InputError("both PROMPT arguments and --prompts were given", "pass prompts as arguments or in a file, not both")
    if prompts_file == "-":
        return prompt_lines(sys.stdin.read().removeprefix("\ufeff"), "-")  # a BOM is not part of the first prompt
    if prompts_file:
        return read_prompt_file(prompts_file)
    if not prompts:
        raise InputError("no prompt given", 'pass a prompt as an argument, e.g. "a shiba inu in a beret", or --prompts FILE')
    joined = " ".join(prompts).strip()
    if not joined:
        raise InputError("the prompt is empty", "pass some text to generate from")
    return [joined]


def slugify(text: str) -> str:
    """A short, filesystem-safe name from a prompt."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:SLUG_CHARS].rstrip("-") or "video"


def video_seeds(prompt_index: int, seed: int, num_videos: int) -> list[int]:
    """Seeds of a prompt's videos: video k of the run (counting over prompts) uses seed + k."""
    return [seed + prompt_index * num_videos + k for k in range(num_videos)]


@dataclass
class SamplingJob:
    """Everything one sampling run needs; None means "the model's default" (see the CLI help
    of `osp t2v sample` for each option)."""

    prompts: list[str]
    negative_prompt: str = ""
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    seed: int | None = None
    num_videos: int = 1
    fps: float | None = None
    output_dir: Path = DEFAULT_OUTPUT
    save_latents: bool = False
    overwrite: bool = False
    model: str = DEFAULT_REPO
    version: str | None = None
    transformer: Path | None = None
    text_encoder: str | None = None
    device: str | None = None
    dtype: str | None = None
    offload: bool = False
    tile: bool | None = None
    clean_caption: bool = False
    attention: str = "auto"
    cache: str | None = None
    """A `CACHE_METHODS` name; None: the speed profile's, else none."""
    cache_threshold: float | None = None
    guidance_interval: str | tuple[float, float] | None = None
    """Noise levels "LO,HI" (or a pair) where classifier-free guidance runs; None: the speed
    profile's, else every step."""
    speed: str | None = None
    """A `SPEED_PROFILES` name (None: default); it fills scheduler, steps, cache, threshold and
    interval where they are None (`t2v_inputs.resolve_speed`)."""
    compile: bool = False
    parallel: str | None = None  # under torchrun: auto, data, cfg, sp, cfg+sp (None: auto)
    allow_empty_prompt: bool = False  # `osp edit`: the video itself says what to show
    lora: list[Any] = field(default_factory=list)
    """LoRA adapters merged into the transformer: "PATH[:SCALE]" strings, (path, scale) pairs
    or `AdapterSpec`s (scale 1 when not given); several add up."""

    def validate(self) -> None:
        """`InputError` for given values that cannot work (nothing is loaded or looked up)."""
        if not self.prompts or not (self.allow_empty_prompt or all(p.strip() for p in self.prompts)):
            raise InputError("the prompt is empty", "pass some text to generate from")
        check_video_size(self.frames, self.height, self.width)
        for name, value, low, example in (("--num-videos", self.num_videos, 1, "1"), ("--steps", self.steps, 1, "150")):
            if value is not None and value < low:
                raise InputError(f"{name} must be >= {low}, got {value}", f"pass e.g. {name} {example}")
        if self.steps is not None:
            check_max_steps(self.steps)
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"--fps must be a number > 0, got {self.fps}", "pass e.g. --fps 24")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise InputError(f"--guidance must be a number >= 0, got {self.guidance}", "pass e.g. --guidance 7.5 (1 turns guidance off)")
        if self.seed is not None and not 0 <= self.seed < MAX_SEED:
            raise InputError(f"--seed must be a non-negative 64-bit integer, got {self.seed}", "pass e.g. --seed 42")
        if self.scheduler is not None:
            scheduler_name(self.scheduler)
        if self.transformer is not None and self.version is not None:
            raise InputError("--transformer and --version both choose the transformer weights", "pass only one of them")
        if self.version is not None:
            parse_version(self.version)
        check_speed_options(self.speed, self.cache, self.cache_threshold)
        self.interval()
        if self.clean_caption:
            check_clean_caption_deps()
        for spec in self.lora:
            parse_adapter_spec(spec)

    def interval(self) -> tuple[float, float] | None:
        """`guidance_interval` checked, as (LO, HI) noise levels."""
        return interval_of(self.guidance_interval)


def interval_of(given: str | tuple[float, float] | list[float] | None) -> tuple[float, float] | None:
    """A job's guidance interval ("LO,HI" or a pair) checked, as (LO, HI) noise levels."""
    return parse_guidance_interval(given if given is None or isinstance(given, str) else ",".join(str(v) for v in given))


def check_speed_options(speed: str | None, cache: str | None, threshold: float | None) -> None:
    """The checks of `--speed`, `--cache` and `--cache-threshold` that need no model (one-line
    `InputError`s); without --cache the threshold's cache is the profile's, known once the model is."""
    check_speed_name(speed)
    if cache is not None:
        check_cache_options(cache, threshold)
    else:
        check_cache_threshold(threshold)


@dataclass
class VideoOutput:
    """One video of a run: its prompt, seed and file names (in the output folder)."""

    prompt_index: int
    prompt: str
    seed: int
    stem: str
    save_latents: bool
    suffix: str = ".mp4"  # .png for one frame (`io.frames_suffix`)

    @property
    def names(self) -> list[str]:
        """mp4 (or png), (latents,) sidecar: the sidecar last, as it is written last."""
        return [f"{self.stem}{self.suffix}"] + ([f"{self.stem}{LATENTS_SUFFIX}"] if self.save_latents else []) + [f"{self.stem}.json"]


@dataclass
class SamplingPlan:
    """A checked job with every setting resolved; nothing loaded yet."""

    job: SamplingJob
    repository: ModelRepository
    version: str  # a weights folder name, or the --transformer folder
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    scheduler: str
    fps: float
    seed: int
    device: torch.device
    dtype: torch.dtype
    attention: str
    cache: str
    cache_threshold: float | None
    videos: list[VideoOutput]
    warnings: list[str] = field(default_factory=list)
    parallel: ParallelLayout = SINGLE_PROCESS  # also says which process this is
    adapters: list[AdapterSpec] = field(default_factory=list)
    """The job's LoRA adapters, checked and hashed."""
    guidance_interval: tuple[float, float] | None = None
    """Noise levels where guidance runs (None: every step)."""
    speed: str = "default"
    """The `--speed` profile the settings were resolved with."""

    @property
    def output_dir(self) -> Path:
        return self.job.output_dir

    @property
    def rank_videos(self) -> list[VideoOutput]:
        """The videos this process denoises: every rank's share under `data`, else all."""
        return self.videos[self.parallel.dp_rank :: self.parallel.data] if self.parallel.data > 1 else self.videos

    @property
    def writes(self) -> bool:
        """Whether this process decodes into and writes its videos' files: under cfg / sp the
        ranks share each video and the first rank writes it."""
        return not self.parallel.shares_videos or self.parallel.is_main


def resolve_job_speed(job: SamplingJob, sampling: dict[str, Any], guidance: float) -> SpeedChoice:
    """The job's scheduler, steps, cache, threshold and guidance interval, its speed profile
    filling what it left unset (`resolve_speed`; default: the model's plain settings), checked
    against the model (`sampling`, its sampling defaults) before anything loads: steps the
    scheduler can run, a cache the model and `guidance` can take. One-line `InputError`s; a
    refusal of what the profile chose names the choice."""
    speed = resolve_speed(job.speed, sampling, job.scheduler, job.steps, job.cache, job.cache_threshold, job.interval(), guidance, f"'{job.model}'")

    def chosen(*names: str) -> str:
        """What the profile chose of `names`, for a refusal of them."""
        named = [f"{name} {getattr(speed, name)}" for name in names if name in speed.from_profile]
        return f" (--speed {speed.speed} chooses {', '.join(named)})" if named else ""

    try:
        check_steps(speed.scheduler, speed.steps)
    except InputError as exc:
        raise InputError(exc.message + chosen("scheduler", "steps"), exc.hint) from None
    try:
        check_cache_options(speed.cache, speed.cache_threshold)
        check_cache_for_model(speed.cache, sampling, speed.scheduler, guidance)  # fitted values, their scheduler, guidance on
    except InputError as exc:
        raise InputError(exc.message + chosen("scheduler", "cache"), exc.hint) from None
    return speed


def plan_sampling(job: SamplingJob, check_outputs: bool = True) -> SamplingPlan:
    """Check `job` and resolve its settings from the model repository, before any weights load
    (`check_outputs`: refuse existing outputs unless job.overwrite). Raises one-line `OSPError`s."""
    job.validate()
    repository = ModelRepository.resolve(job.model, job.text_encoder)
    # unset settings come from the model: its sampling.json, and the size its weights were
    # trained on (so `--model builtin:shapes` samples 17x64x64 at 8 fps without flags)
    defaults = repository.sampling
    fps = float(defaults["fps"]) if job.fps is None else float(job.fps)
    guidance = float(defaults["guidance"]) if job.guidance is None else float(job.guidance)
    speed = resolve_job_speed(job, defaults, guidance)
    scheduler, steps, cache = speed.scheduler, speed.steps, speed.cache
    if cache == "pab" and job.compile:
        # PAB's hooks sit on the attention modules inside the compiled blocks: its per-step
        # decision changes their graphs, and they recompile until torch gives up (measured)
        raise InputError("--cache pab cannot run with --compile: PAB decides inside the blocks --compile compiles", "pass --cache teacache, fbcache, magcache, easycache or fastercache with --compile (they decide outside the blocks), or leave out --compile")
    interval = speed.guidance_interval
    if interval is not None and guidance <= 1.0:
        raise InputError(f"--guidance-interval limits guidance, and --guidance {guidance:g} turns it off", "pass --guidance above 1, or leave out --guidance-interval")

    adapters = check_adapters(job.lora)  # missing or corrupt adapter files, before torch
    warnings = []
    if job.transformer is not None:
        version = str(check_transformer_folder(job.transformer))
        size = version_size(version, repository.versions)
    else:
        version = repository.pick_version(job.frames) if job.version is None else job.version
        repository.check_version(version)
        size = parse_version(version)
    frames, height, width = (size[i] if given is None else given for i, given in enumerate((job.frames, job.height, job.width)))
    check_video_size(frames, height, width)  # a folder name such as 10x30x30 gives no valid size
    if job.transformer is None and frames > size[0]:
        # allowed (the temporal positions interpolate), but the user should know
        reason = "longer than any trained length" if job.version is None else f"longer than the {version} weights were trained on"
        warnings.append(f"{frames} frames is {reason}; using the {version} weights (trained on {size[0]} frames)")

    seed = secrets.randbelow(2**31) if job.seed is None else job.seed
    videos = [
        VideoOutput(index, prompt, video_seed, f"{slugify(prompt)}-{video_seed}", job.save_latents, frames_suffix(frames))
        for index, prompt in enumerate(job.prompts)
        for video_seed in video_seeds(index, seed, job.num_videos)
    ]
    if check_outputs and not job.overwrite:  # refused before torch loads: the CLI answers at once
        check_no_overwrite(job.output_dir, [name for video in videos for name in video.names])
    if check_outputs:
        from ..io.atomic import check_creatable_dir

        check_creatable_dir(job.output_dir)  # before torch loads; the run checks again when it starts

    # the names first, without torch: a misspelt option is refused at once
    check_device_name(job.device)
    check_dtype_name(job.dtype)
    attention_name(job.attention)

    import torch

    from ..device import cpu_has_native_bf16, resolve
    from ..models.attention import resolve_attention_backend

    device, dtype = resolve(job.device, job.dtype)  # bad --device/--dtype before any Hub access
    rank, world_size, local_rank = launched_world()
    device = rank_device(device, local_rank)
    if job.dtype is None and device.type == "cpu" and cpu_has_native_bf16():
        # measured with benchmarks/caching.py on builtin:shapes (180 videos): bf16 samples 1.4x
        # faster and keeps the quality table within a video or two of fp32's (docs/speed-and-memory.md, bf16 on CPUs)
        dtype = torch.bfloat16
    attention = resolve_attention_backend(job.attention, device, dtype)
    t5 = repository.t5_location()  # T5 found and checked now, before gigabytes of weights

    parallel = resolve_parallel(job.parallel, world_size, len(videos), guidance, rank, local_rank)
    if cache != "none" and parallel.shares_videos:
        # a cache decides per process which work to skip; ranks sharing a video must not differ
        raise InputError(f"--cache {cache} cannot run with --parallel {parallel.mode} (its ranks share each step's work)", "use --cache none, or --parallel data")
    if interval is not None and parallel.cfg > 1:
        # outside the interval there is no unconditional half for the second rank
        raise InputError(f"--guidance-interval cannot run with --parallel {parallel.mode} (its ranks split the guidance halves)", "use --parallel data or sp, or leave out --guidance-interval")
    if job.offload and parallel.sp > 1 and device.type != "cpu":
        # offload hooks move the weights when forward runs; DSP calls the model's stages itself
        raise InputError(f"--offload cannot run with --parallel {parallel.mode}", "leave out --offload (each process holds a share of the activations), or use --parallel cfg or data")
    plan = SamplingPlan(job, repository, version, frames, height, width, steps, guidance, scheduler, fps, seed, device, dtype, attention, cache, speed.cache_threshold, videos, warnings, parallel, adapters, interval, speed.speed)
    with quiet_libraries():  # diffusers notes a checkpoint config's EMA keys
        check_memory(plan, t5)
    return plan


def check_memory(plan: SamplingPlan, t5: T5Location) -> None:
    """Refuse a job whose largest phase cannot fit the device (`memory.check_t2v_sample_memory`:
    the hint names the --num-videos or size that would), from the models' configs alone."""
    import functools

    from ..memory import check_t2v_sample_memory, t2v_sample_memory

    repository, job = plan.repository, plan.job
    transformer_config = repository.read_config(plan.version)
    vae_config = repository.read_config("vae")
    t5_config = read_t5_config(t5)
    sizes = model_sizes(transformer_config, vae_config, t5_config)
    counts = [sizes[name][0] for name in ("transformer", "vae", "text_encoder")]
    estimate = functools.partial(
        t2v_sample_memory,
        guidance=plan.guidance > 1.0,
        transformer_config=transformer_config,
        transformer_params=counts[0],
        vae_config=vae_config,
        vae_params=counts[1],
        text_encoder_params=counts[2],
        text_encoder_width=int(t5_config.get("d_model", 4096)),
        dtype=plan.dtype,
        tiled=job.tile is not False,
        offload=job.offload and plan.device.type != "cpu",
    )
    given = [name for name in ("frames", "height", "width") if getattr(job, name) is not None]  # a hint changes what the user chose
    check_t2v_sample_memory(lambda f, h, w, n: estimate(frames=f, height=h, width=w, num_videos=n), plan.frames, plan.height, plan.width, job.num_videos, plan.device, given)


def check_no_overwrite(output_dir: Path, names: list[str]) -> None:
    """`InputError` when any output already exists (earlier runs are not replaced silently)."""
    existing = [output_dir / name for name in names if (output_dir / name).exists()]
    if existing:
        what = f"'{existing[0]}' and {len(existing) - 1} more outputs already exist" if len(existing) > 1 else f"'{existing[0]}' already exists"
        raise InputError(what, "pass --overwrite to replace them, or choose another --seed or --output-dir")
