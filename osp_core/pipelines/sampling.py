"""Text-to-video sampling as a library job: `osp t2v sample`, editing and the web page run it.

`plan_sampling(job)` checks everything that can be checked before weights load (sizes, names,
the model repository, the T5 location, the attention backend, the cache, existing outputs) and
resolves every unset setting from the model. `run_sampling(job, progress)` then loads the
models, encodes every prompt with T5, frees T5, denoises and decodes each prompt's videos and
writes each video's mp4, JSON sidecar and (optionally) latents together, reporting progress
through the `SamplingProgress` callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import InputError
from ..hub import DEFAULT_REPO
from ..parallel.launch import SINGLE_PROCESS, ParallelLayout, launched_world, rank_device, resolve_parallel
from .repository import ModelRepository, check_transformer_folder
from .t2v_inputs import T5Location, check_cache_options, check_clean_caption_deps, check_max_steps, check_steps, check_video_size, parse_version, scheduler_name, version_size

if TYPE_CHECKING:
    import torch

DEFAULT_OUTPUT = Path("samples/t2v")
SLUG_CHARS = 48
MAX_SEED = 2**63


# -- inputs ---------------------------------------------------------------------------------


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from the arguments (joined into one), or one per non-blank line of a file
    ('-' = stdin)."""
    if prompts and prompts_file:
        raise InputError("both PROMPT arguments and --prompts were given", "pass prompts as arguments or in a file, not both")
    if prompts_file:
        if prompts_file == "-":
            text = sys.stdin.read().removeprefix("\ufeff")  # a BOM is not part of the first prompt
        else:
            path = Path(prompts_file)
            if path.is_dir():
                raise InputError(f"prompt file '{prompts_file}' is a directory", "pass a text file with one prompt per line, or - for stdin")
            if not path.is_file():
                raise InputError(f"prompt file '{prompts_file}' does not exist", "pass a text file with one prompt per line, or - for stdin")
            try:
                text = path.read_text(encoding="utf-8-sig")  # utf-8-sig: editors on Windows start files with a BOM
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"cannot read prompt file '{prompts_file}': {exc.__class__.__name__}", "pass a UTF-8 text file with one prompt per line") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise InputError(f"prompt file '{prompts_file}' has no prompts", "write one prompt per line")
        return lines
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
    cache: str = "none"
    cache_threshold: float | None = None
    compile: bool = False
    parallel: str | None = None  # under torchrun: auto, data, cfg, sp, cfg+sp (None: auto)
    allow_empty_prompt: bool = False  # `osp edit`: the video itself says what to show

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
        check_cache_options(self.cache, self.cache_threshold)
        if self.clean_caption:
            check_clean_caption_deps()


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
        return [f"{self.stem}{self.suffix}"] + ([f"{self.stem}.latents.safetensors"] if self.save_latents else []) + [f"{self.stem}.json"]


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
    parallel: ParallelLayout = SINGLE_PROCESS
    rank: int = 0

    @property
    def output_dir(self) -> Path:
        return self.job.output_dir

    @property
    def rank_videos(self) -> list[VideoOutput]:
        """The videos this process denoises: every rank's share under `data`, else all."""
        return self.videos[self.rank :: self.parallel.data] if self.parallel.data > 1 else self.videos

    @property
    def writes(self) -> bool:
        """Whether this process decodes into and writes its videos' files: under cfg / sp the
        ranks share each video and the first rank writes it."""
        return not self.parallel.shares_videos or self.rank == 0


def plan_sampling(job: SamplingJob, check_outputs: bool = True) -> SamplingPlan:
    """Check `job` and resolve its settings from the model repository, before any weights load
    (`check_outputs`: refuse existing outputs unless job.overwrite). Raises one-line `OSPError`s."""
    job.validate()
    repository = ModelRepository.resolve(job.model, job.text_encoder)
    # unset settings come from the model: its sampling.json, and the size its weights were
    # trained on (so `--model builtin:shapes` samples 17x64x64 at 8 fps without flags)
    defaults = repository.sampling
    fps = float(defaults["fps"]) if job.fps is None else float(job.fps)
    steps = int(defaults["steps"]) if job.steps is None else job.steps
    guidance = float(defaults["guidance"]) if job.guidance is None else float(job.guidance)
    scheduler = scheduler_name(str(job.scheduler or defaults["scheduler"]))
    check_steps(scheduler, steps)

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

    import torch

    from ..device import cpu_has_native_bf16, resolve
    from ..models.attention import resolve_attention_backend

    device, dtype = resolve(job.device, job.dtype)  # bad --device/--dtype before any Hub access
    rank, world_size, local_rank = launched_world()
    device = rank_device(device, local_rank)
    if job.dtype is None and device.type == "cpu" and cpu_has_native_bf16():
        # measured with benchmarks/caching.py on builtin:shapes (180 videos): bf16 samples 1.4x
        # faster and keeps the quality table within a video or two of fp32's (README)
        dtype = torch.bfloat16
    attention = resolve_attention_backend(job.attention, device, dtype)
    cache = check_cache_options(job.cache, job.cache_threshold)
    if cache == "teacache" and repository.teacache() is None:
        from .caching import make_cache

        make_cache(cache, job.cache_threshold, None)  # raises: this model has no coefficients
    t5 = repository.t5_location()  # T5 found and checked now, before gigabytes of weights

    from ..io.video import frames_suffix

    seed = secrets.randbelow(2**31) if job.seed is None else job.seed
    videos = [
        VideoOutput(index, prompt, video_seed, f"{slugify(prompt)}-{video_seed}", job.save_latents, frames_suffix(frames))
        for index, prompt in enumerate(job.prompts)
        for video_seed in video_seeds(index, seed, job.num_videos)
    ]
    parallel = resolve_parallel(job.parallel, world_size, len(videos), guidance, rank, local_rank)
    if cache != "none" and parallel.shares_videos:
        # a cache decides per process which work to skip; ranks sharing a video must not differ
        raise InputError(f"--cache {cache} cannot run with --parallel {parallel.mode} (its ranks share each step's work)", "use --cache none, or --parallel data")
    if job.offload and parallel.sp > 1 and device.type != "cpu":
        # offload hooks move the weights when forward runs; DSP calls the model's stages itself
        raise InputError(f"--offload cannot run with --parallel {parallel.mode}", "leave out --offload (each process holds a share of the activations), or use --parallel cfg or data")
    if check_outputs and not job.overwrite:
        check_no_overwrite(job.output_dir, [name for video in videos for name in video.names])
    plan = SamplingPlan(job, repository, version, frames, height, width, steps, guidance, scheduler, fps, seed, device, dtype, attention, cache, job.cache_threshold, videos, warnings, parallel, rank)
    with _quiet_libraries():  # diffusers notes a checkpoint config's EMA keys
        check_memory(plan, t5)
    return plan


def read_t5_config(t5: T5Location) -> dict:
    """The config.json of the T5 encoder `t5` points at (only config files fetched from the Hub)."""
    from ..hub import resolve_model_dir
    from .repository import read_config_json

    folder = Path(t5.encoder) if Path(t5.encoder).is_dir() else resolve_model_dir(t5.encoder, subfolders=[])
    return read_config_json(folder / (t5.encoder_subfolder or ""))


def model_sizes(transformer_config: dict, vae_config: dict, t5_config: dict) -> dict[str, tuple[int, int]]:
    """(parameters, repeated transformer blocks) of the transformer, VAE and T5 encoder built
    from their configs on the meta device: nothing allocated, nothing loaded."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from ..models.causal_vae import CausalVideoVAE
    from ..models.latte_t2v import LatteT2V
    from ..train.parallelize import transformer_blocks

    with torch.device("meta"):
        models = {"transformer": LatteT2V.from_config(transformer_config), "vae": CausalVideoVAE.from_config(vae_config), "text_encoder": T5EncoderModel(T5Config.from_dict(t5_config))}
    return {name: (sum(p.numel() for p in model.parameters()), len(transformer_blocks(model))) for name, model in models.items()}


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


# -- progress -------------------------------------------------------------------------------


class SamplingProgress(Protocol):
    """What a run reports: `status` for phases without steps (loading, encoding), `video` when
    prompt `index` of `total` starts denoising, `step` after every denoising step, `notice`
    for warnings and notes ("warning" / "note"). Raising from a callback stops the run."""

    def status(self, message: str) -> None: ...

    def video(self, index: int, total: int, prompt: str) -> None: ...

    def step(self, done: int, total: int) -> None: ...

    def notice(self, kind: str, message: str) -> None: ...


@contextlib.contextmanager
def output_folder(folder: Path, warnings: list[str], progress: SamplingProgress) -> Iterator[None]:
    """The run's output folder checked writable (it is created when the first file is written,
    so a run killed before that leaves none), and the plan's warnings shown (after every check,
    so a failing run shows one line); libraries kept quiet for the block. Folders a killed run
    left empty beside it are swept (`remove_stale_temps`). A run that fails leaves no folder
    it created."""
    from ..io.atomic import check_creatable_dir, remove_stale_temps
    from ..io.paths import existing_ancestor, folders_to_create, remove_empty_folders

    check_creatable_dir(folder)
    remove_stale_temps(existing_ancestor(folder.parent))  # where a killed run's empty folder would be
    created = folders_to_create(folder)
    for message in warnings:
        progress.notice("warning", message)
    try:
        with _quiet_libraries():
            yield
    except BaseException:
        remove_empty_folders(created)
        raise


class NoProgress:
    """A `SamplingProgress` that shows nothing (library callers that pass none)."""

    def status(self, message: str) -> None:
        pass

    def video(self, index: int, total: int, prompt: str) -> None:
        pass

    def step(self, done: int, total: int) -> None:
        pass

    def notice(self, kind: str, message: str) -> None:
        pass


@dataclass
class SamplingSummary:
    """What a run wrote: one record per video (the sidecar's content plus absolute paths); under
    torchrun every rank's videos, and `rank` says which process this is (the first reports)."""

    videos: list[dict[str, Any]]
    seconds_total: float
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"videos": self.videos, "seconds_total": round(self.seconds_total, 3)}


# -- the run --------------------------------------------------------------------------------


class PipelineCache:
    """Keeps the last loaded pipeline between runs, so a long-lived caller (the web page) loads
    a model once, not per video. T5 stays loaded too (prompts keep coming); a run needing other
    weights, another dtype or device replaces the pipeline, so at most one model is held.
    One run at a time may use it."""

    def __init__(self) -> None:
        self._key: tuple[str, ...] | None = None
        self._pipe: Any = None

    def get(self, key: tuple[str, ...], load: Callable[[], Any]) -> tuple[Any, bool]:
        """The pipeline for `key` and whether it was loaded now (`load()` when it is not held)."""
        if self._key == key:
            return self._pipe, False
        import gc

        self._key, self._pipe = None, None
        gc.collect()  # free the previous model before the next one loads
        self._pipe = load()
        self._key = key
        return self._pipe, True


def run_sampling(job: SamplingJob | SamplingPlan, progress: SamplingProgress | None = None, mesh: Any = None, pipelines: PipelineCache | None = None) -> SamplingSummary:
    """Plan (unless given a plan), then load, encode, denoise, decode and write every video.
    A failed run leaves no output folder it created and no partial file.

    `pipelines` keeps the loaded models for the next run (else they are freed after it; T5 is
    freed once prompts are encoded). Under torchrun the ranks share the job as `plan.parallel`
    says (`parallel.launch`): the process group is joined here unless the caller joined one,
    and `mesh` (a (cfg, sp) DeviceMesh) may be passed in; only the first rank reports progress.
    """
    from ..errors import OSPError
    from ..parallel.launch import PeerProcessFailed, is_peer_failure, process_group

    try:
        plan = job if isinstance(job, SamplingPlan) else plan_sampling(job)
    except OSPError as exc:
        # every rank plans alike and fails alike: the first rank's line is the one shown
        exc.quiet = launched_world()[0] != 0
        raise
    progress = progress if progress is not None and plan.rank == 0 else NoProgress()
    try:
        with output_folder(plan.output_dir, plan.warnings, progress), process_group(plan.device) if plan.parallel.world_size > 1 else contextlib.nullcontext():
            return SamplingRun(plan, progress, mesh, pipelines).run()
    except BaseException as exc:
        if plan.parallel.world_size > 1 and is_peer_failure(exc):
            # the process that failed prints the one line; torchrun stops the rest
            raise PeerProcessFailed(f"stopped: another process of this torchrun job failed ({type(exc).__name__})") from None
        raise


class SamplingRun:
    """One sampling run's loaded state: `load()` gives the placed pipeline and the prompt
    embeddings, `denoise` / `write` do one prompt; `osp edit` reuses `load` and `settings`."""

    def __init__(self, plan: SamplingPlan, progress: SamplingProgress, mesh: Any = None, pipelines: PipelineCache | None = None) -> None:
        self.plan = plan
        self.progress = progress
        self.mesh = mesh
        self.pipelines = pipelines
        self.transformer_forward: Any = None  # the transformer wrapped for cfg / sp, else None

    def load_pipeline(self) -> Any:
        """The pipeline on the CPU, every component loaded."""
        from .t2v import T2VPipeline
        from .video_vae import configure_tiling

        plan, job = self.plan, self.plan.job
        self.progress.status(f"loading {job.model} ({plan.version}) ...")
        pipe = T2VPipeline.from_pretrained(
            plan.repository,
            version=None if job.transformer is not None else plan.version,
            transformer=job.transformer,
            scheduler=plan.scheduler,
            torch_dtype=plan.dtype,
        )
        pipe.set_progress_bar_config(disable=True)
        configure_tiling(pipe.vae, job.tile)  # tiles only when the video exceeds a tile, unless --no-tile
        return pipe

    def load(self) -> tuple[Any, dict[int, Any]]:
        """The pipeline on the device, ready to denoise, and the T5 states of every prompt this
        process denoises, by prompt index (T5 is freed once they are encoded, unless the
        pipeline is kept for later runs)."""
        from ..models.attention import set_attention_backend
        from .t2v import make_scheduler
        from .video_vae import configure_tiling

        plan, job, progress = self.plan, self.plan.job, self.progress
        device = plan.device
        use_offload = job.offload and device.type != "cpu"
        if job.offload and not use_offload:
            progress.notice("note", "--offload has no effect on the CPU")
        if self.pipelines is not None:
            key = (job.model, str(plan.repository.root), plan.version, str(job.text_encoder), str(device), str(plan.dtype), str(use_offload))
            pipe, loaded = self.pipelines.get(key, self.load_pipeline)
            if loaded:
                self.place(pipe, use_offload)
            else:  # the settings a run may change on a kept pipeline
                pipe.register_modules(scheduler=make_scheduler(plan.scheduler))
                configure_tiling(pipe.vae, job.tile)
        else:
            pipe = self.load_pipeline()
            # T5 only encodes prompts: run it first, then drop it before the transformer needs the memory
            if use_offload:
                pipe.enable_model_cpu_offload(device=device)
            else:
                pipe.text_encoder.to(device)
        progress.status("encoding prompts ...")
        do_cfg = plan.guidance > 1.0
        # one prompt at a time, as the original loop (each cut to its own token count)
        prompt_indices = sorted({video.prompt_index for video in plan.rank_videos})
        embeddings = {i: pipe.encode_prompt(job.prompts[i], job.negative_prompt, do_cfg, job.clean_caption, device=device) for i in prompt_indices}
        for index, encoded in embeddings.items():
            if encoded.truncated[0]:
                limit = pipe.transformer.config.model_max_length
                progress.notice("warning", f"prompt {index + 1} is longer than {limit} tokens; cut: {encoded.truncated[0]!r}")
        if self.pipelines is None and not use_offload:
            pipe.free_text_encoder()
            self.place(pipe, use_offload)
        set_attention_backend(pipe.transformer, plan.attention)
        set_attention_backend(pipe.vae, plan.attention)
        if job.compile:
            compile_blocks(pipe.transformer)
        if plan.parallel.shares_videos:
            from ..parallel.launch import build_mesh, parallelize_transformer

            self.mesh = self.mesh or build_mesh(plan.parallel, device)
            self.transformer_forward = parallelize_transformer(pipe.transformer, self.mesh)
        return pipe, embeddings

    def place(self, pipe: Any, use_offload: bool) -> None:
        """Every loaded component on the device (or behind offload hooks)."""
        if use_offload:
            pipe.enable_model_cpu_offload(device=self.plan.device)
            return
        for component in (pipe.text_encoder, pipe.transformer, pipe.vae):
            if component is not None:  # T5 is gone once prompts are encoded, unless kept
                component.to(self.plan.device)

    def run(self) -> SamplingSummary:
        from ..memory import oom_as_error
        from .caching import make_cache

        started = time.perf_counter()
        pipe, embeddings = self.load()
        cache = make_cache(self.plan.cache, self.plan.cache_threshold, self.plan.repository.teacache())
        if cache is not None:
            cache.attach(pipe.transformer)
        try:
            records = []
            for prompt_index, encoded in embeddings.items():
                with oom_as_error("sampling", "use fewer --num-videos, a smaller --height/--width, or --offload"):
                    latents, seconds_denoise = self.denoise(pipe, prompt_index, encoded, [cache] if cache is not None else [])
                    records += self.write(pipe, prompt_index, self.plan.job.prompts[prompt_index], encoded, latents, seconds_denoise, cache)
        finally:
            if cache is not None:
                cache.detach()
        return SamplingSummary(self.gather(records), time.perf_counter() - started, self.plan.rank)

    def gather(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's records, in the run's video order (this rank's alone in one process)."""
        if self.plan.parallel.world_size == 1:
            return records
        import torch.distributed as dist

        every: list[list[dict[str, Any]]] = [[] for _ in range(self.plan.parallel.world_size)]
        dist.all_gather_object(every, records)
        order = {video.stem: index for index, video in enumerate(self.plan.videos)}
        return sorted((record for part in every for record in part), key=lambda record: order[Path(record["video"]).stem])

    def denoise(self, pipe: Any, prompt_index: int, encoded: Any, callbacks: list[Any]) -> tuple[torch.Tensor, float]:
        """Final latents of prompt `prompt_index`'s videos, and the seconds it took."""
        import torch

        from .denoising import StepProgress

        plan, job = self.plan, self.plan.job
        # CPU generators: the same seed gives the same noise on every device
        generators = [torch.Generator("cpu").manual_seed(v.seed) for v in plan.rank_videos if v.prompt_index == prompt_index]
        self.progress.video(prompt_index, len(job.prompts), job.prompts[prompt_index])
        t0 = time.perf_counter()
        latents = pipe(
            prompt_embeds=encoded,
            num_frames=plan.frames,
            height=plan.height,
            width=plan.width,
            num_inference_steps=plan.steps,
            guidance_scale=plan.guidance,
            num_videos_per_prompt=len(generators),
            generator=generators,
            output_type="latent",
            # one frame is an image: spatial blocks only, as the original's --force_images
            enable_temporal_attentions=plan.frames > 1,
            callbacks=[*callbacks, StepProgress(self.progress.step)],
            transformer_forward=self.transformer_forward,
        ).frames
        return latents, time.perf_counter() - t0

    def settings(self, pipe: Any, cache: Any) -> dict[str, Any]:
        plan, job = self.plan, self.plan.job
        from ..device import dtype_name

        return {
            "frames": plan.frames,
            "temporal_attention": plan.frames > 1,
            "height": plan.height,
            "width": plan.width,
            "steps": plan.steps,
            "guidance": plan.guidance,
            "scheduler": type(pipe.scheduler).__name__,
            "fps": plan.fps,
            "num_videos": job.num_videos,
            "device": str(plan.device),
            "dtype": dtype_name(plan.dtype),
            "offload": job.offload and plan.device.type != "cpu",
            "tile": job.tile is not False,
            "clean_caption": job.clean_caption,
            "attention": plan.attention,
            "compile": job.compile,
            # uncached, every timestep run (an edit's from its cut) ran the transformer once
            "cache": cache.describe() if cache is not None else {"method": "none", "transformer_evaluations": pipe.num_timesteps},
        } | ({"parallel": plan.parallel.to_dict()} if plan.parallel.world_size > 1 else {})

    def write(self, pipe: Any, prompt_index: int, prompt: str, encoded: Any, latents: torch.Tensor, seconds_denoise: float, cache: Any) -> list[dict[str, Any]]:
        """Decode prompt `prompt_index`'s latents and write each video's files together."""
        import osp_core

        from ..io import json_dumps, write_frames
        from ..io.outputs import FileGroup
        from .video_vae import save_latents

        plan, job = self.plan, self.plan.job
        videos = [v for v in plan.rank_videos if v.prompt_index == prompt_index]
        t0 = time.perf_counter()
        if plan.parallel.shares_videos:
            import functools

            from ..parallel.vae import decode_over_ranks

            decoded = pipe.decode_latents(latents, functools.partial(decode_over_ranks, pipe.vae))
        else:
            decoded = pipe.decode_latents(latents)
        seconds_decode = time.perf_counter() - t0
        if not plan.writes:  # the first rank holds the video and writes it
            return []

        settings = self.settings(pipe, cache)
        models = {"model": job.model, "version": plan.version, "text_encoder": pipe.text_encoder_source}
        scaling_factor = float(pipe.vae.config.scaling_factor)
        records = []
        for k, video in enumerate(videos):
            paths = [plan.output_dir / name for name in video.names]
            video_path, sidecar = paths[0], paths[-1]
            # the sidecar names its files relative to itself (the folder can move); the summary
            # gives absolute paths
            record: dict[str, Any] = {
                "prompt": prompt,
                "negative_prompt": job.negative_prompt,
                "seed": video.seed,
                "settings": settings,
                "models": models,
                "video": video_path.name,
                "num_frames": int(decoded.shape[1]),
                "size": [int(decoded.shape[2]), int(decoded.shape[3])],
                "truncated_prompt_part": encoded.truncated[0],
                "seconds": {"denoise": round(seconds_denoise / len(videos), 3), "decode": round(seconds_decode / len(videos), 3)},
                "osp_version": osp_core.__version__,
            }
            absolute = {"video": str(video_path.absolute()), "sidecar": str(sidecar.absolute())}
            with FileGroup(paths, overwrite=job.overwrite) as group:
                write_frames(group.path(video_path), decoded[k], fps=plan.fps)  # one frame: a PNG
                if job.save_latents:
                    latent_path = paths[1]
                    # unscaled, with `osp vae encode`'s header, so `osp vae decode` gives this video
                    header = {
                        "fps": plan.fps,
                        "frames": plan.frames,
                        "height": plan.height,
                        "width": plan.width,
                        "scaling_factor": scaling_factor,
                        "model": plan.repository.vae_source,
                        "dtype": settings["dtype"],  # `osp vae decode` decodes in it by default
                        "source": "osp t2v sample",
                        "version": plan.version,
                        "text_encoder": pipe.text_encoder_source,
                        "scheduler": settings["scheduler"],
                        "steps": plan.steps,
                        "guidance": plan.guidance,
                        "prompt": prompt,
                        "negative_prompt": job.negative_prompt,
                        "seed": video.seed,
                    }
                    save_latents(group.path(latent_path), (latents[k : k + 1].float() / scaling_factor).cpu(), header)
                    record["latents"] = latent_path.name
                    absolute["latents"] = str(latent_path.absolute())
                group.path(sidecar).write_text(json_dumps(record, indent=2) + "\n", encoding="utf-8")
                group.commit()
            records.append({**record, **absolute})
        return records


@dataclass
class TeaCacheFit:
    """TeaCache coefficients fitted for one model and sampling setting."""

    coefficients: list[float]
    steps: int  # calibration points (consecutive denoising steps)
    rms_error: float  # of the fitted polynomial over those points
    model: str
    version: str
    sampling: dict[str, Any]
    written: str | None = None  # the sampling.json updated with the coefficients

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficients": self.coefficients,
            "calibration_steps": self.steps,
            "rms_error": self.rms_error,
            "model": self.model,
            "version": self.version,
            "sampling": self.sampling,
            "written": self.written,
        }


def calibrate_teacache(job: SamplingJob, degree: int = 4, write: bool = False, progress: SamplingProgress | None = None) -> TeaCacheFit:
    """Sample `job`'s prompts without caching, record how much block 0's modulated input and the
    transformer output change from step to step, and fit TeaCache's polynomial (`degree`).
    `write` stores the coefficients in the model folder's sampling.json."""
    import numpy as np

    from ..hub import BUILTIN_PREFIX
    from .caching import TeaCacheCalibration, fit_teacache_coefficients
    from .t2v_inputs import TEACACHE_MAX_DEGREE, read_sampling_file, write_sampling_file

    if not 1 <= degree <= TEACACHE_MAX_DEGREE:
        raise InputError(f"--degree must be in 1..{TEACACHE_MAX_DEGREE}, got {degree}", "pass e.g. --degree 4")
    if write and job.model.startswith(BUILTIN_PREFIX):
        # the built-in model is package data: writing would change it for every user of this install
        raise InputError(f"--write would change '{job.model}', which ships inside the package", "copy its folder (osp_core/builtin/NAME) and pass --model DIR, or leave out --write")
    if launched_world()[1] > 1:
        raise InputError("osp t2v calibrate-cache runs in one process", "run it without torchrun")
    plan = plan_sampling(SamplingJob(**{**job.__dict__, "cache": "none", "cache_threshold": None}), check_outputs=False)
    root = plan.repository.root
    if write and (root is None or plan.repository.is_hub):
        raise InputError(f"--write needs a local model folder, and '{job.model}' is a Hub repository", "download it and pass --model DIR, or leave out --write and copy the coefficients")
    progress = progress or NoProgress()
    run = SamplingRun(plan, progress)
    calibration = TeaCacheCalibration()
    with _quiet_libraries():
        pipe, embeddings = run.load()
        calibration.attach(pipe.transformer)
        try:
            for prompt_index, encoded in embeddings.items():
                run.denoise(pipe, prompt_index, encoded, [calibration])
        finally:
            calibration.detach()
    coefficients = fit_teacache_coefficients(calibration.pairs, degree)
    x, y = (np.array(v) for v in zip(*calibration.pairs))
    rms = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    sampling = {"steps": plan.steps, "guidance": plan.guidance, "scheduler": plan.scheduler, "frames": plan.frames, "height": plan.height, "width": plan.width, "prompts": len(job.prompts)}
    fit = TeaCacheFit(coefficients, len(calibration.pairs), rms, job.model, plan.version, sampling)
    if write:
        settings = {**read_sampling_file(root), "teacache_coefficients": coefficients}
        fit.written = str(write_sampling_file(root, settings))
    return fit


def compile_blocks(transformer: Any) -> None:
    """torch.compile each transformer block in place (regional compilation: one compiled
    graph serves every block of a kind, so compiling costs one block's time, not the model's)."""
    for block in [*transformer.transformer_blocks, *transformer.temporal_transformer_blocks]:
        block.compile()


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers' and transformers' own progress bars and log lines off during a run: the run
    reports progress itself, and their notes (e.g. DPMSolverSinglestep's final sigma with its
    default config) are not actionable here."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipeline_logger = logging.getLogger("osp_core.pipelines.t2v")
    previous_pipeline = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)  # truncation warnings go through `notice`
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(previous)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        pipeline_logger.setLevel(previous_pipeline)
