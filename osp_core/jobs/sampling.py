"""Running a text-to-video sampling job: `run_sampling(job, progress)` plans (`sampling_plan`),
loads the models, encodes every prompt with T5, frees T5, denoises and decodes each prompt's
videos and writes each video's files (`records`), reporting through `SamplingProgress`.
`SamplingRun` (load, place, denoise) is the engine editing, calibration and the page share.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OSPError
from ..parallel.launch import PeerProcessFailed, build_mesh, is_peer_failure, parallelize_transformer
from ..parallel.layout import launched_world, process_group
from .progress import NoProgress, SamplingProgress, quiet_libraries
from .records import LatentsFile, latents_header, sample_sidecar, write_video_files
from .sampling_plan import SamplingJob, SamplingPlan, plan_sampling

if TYPE_CHECKING:
    import torch



@contextlib.contextmanager
def output_folder(folder: Path, warnings: list[str], progress: SamplingProgress) -> Iterator[None]:
    """The run's output folder checked writable (it is created when the first file is written,
    so a run killed before that leaves none), and the plan's warnings shown (after every check,
    so a failing run shows one line); libraries kept quiet for the block. Folders a killed run
    left empty beside it are swept (`remove_stale_temps`). A run that fails leaves no folder
    it created."""
    from ..io.atomic import check_creatable_dir, remove_empty_folders, remove_stale_temps
    from ..io.paths import existing_ancestor, folders_to_create

    check_creatable_dir(folder)
    remove_stale_temps(existing_ancestor(folder.parent))  # where a killed run's empty folder would be
    created = folders_to_create(folder)
    for message in warnings:
        progress.notice("warning", message)
    try:
        with quiet_libraries():
            yield
    except BaseException:
        remove_empty_folders(created)
        raise



@dataclass
class SamplingSummary:
    """What a run wrote: one record per video (the sidecar's content plus absolute paths); under
    torchrun every rank's videos, and `rank` says which process this is (the first reports)."""

    videos: list[dict[str, Any]]
    seconds_total: float
    rank: int = 0
    seconds_load: float = 0.0

    def seconds(self) -> dict[str, float]:
        """Where the run's time went: loading the models once, then each phase summed over the
        videos (their sidecars' `seconds`), and the whole run."""
        phases = {"load": self.seconds_load}
        for record in self.videos:
            for phase, value in record.get("seconds", {}).items():
                phases[phase] = phases.get(phase, 0.0) + value
        return {phase: round(value, 3) for phase, value in phases.items()} | {"total": round(self.seconds_total, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {"videos": self.videos, "seconds_total": round(self.seconds_total, 3), "seconds": self.seconds()}


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
    try:
        plan = job if isinstance(job, SamplingPlan) else plan_sampling(job)
    except OSPError as exc:
        # every rank plans alike and fails alike: the first rank's line is the one shown
        exc.quiet = launched_world()[0] != 0
        raise
    progress = progress if progress is not None and plan.parallel.is_main else NoProgress()
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
        self.seconds_load = 0.0  # models loaded and placed (before the prompts are encoded)
        self.seconds_encode: dict[int, float] = {}  # T5 seconds by prompt index

    def load_pipeline(self) -> Any:
        """The pipeline on the CPU, every component loaded."""
        from ..pipelines.t2v import T2VPipeline
        from ..pipelines.video_vae import configure_tiling

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
        if plan.adapters:
            from ..models.lora import apply_adapters

            self.progress.status(f"merging {len(plan.adapters)} LoRA adapter(s) ...")
            apply_adapters(pipe.transformer, pipe.text_encoder, plan.adapters)
        return pipe

    def load(self) -> tuple[Any, dict[int, Any]]:
        """The pipeline on the device, ready to denoise, and the T5 states of every prompt this
        process denoises, by prompt index (T5 is freed once they are encoded, unless the
        pipeline is kept for later runs)."""
        from ..models.attention import set_attention_backend
        from ..pipelines.t2v import make_scheduler
        from ..pipelines.video_vae import configure_tiling

        plan, job, progress = self.plan, self.plan.job, self.progress
        started = time.perf_counter()
        device = plan.device
        use_offload = job.offload and device.type != "cpu"
        if job.offload and not use_offload:
            progress.notice("note", "--offload has no effect on the CPU")
        if self.pipelines is not None:
            adapters = [f"{a.sha256}:{a.scale!r}" for a in plan.adapters]  # merged into the weights: other adapters, another pipeline
            key = (job.model, str(plan.repository.root), plan.version, str(job.text_encoder), str(device), str(plan.dtype), str(use_offload), *adapters)
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
        self.seconds_load = time.perf_counter() - started
        embeddings = {}
        for i in prompt_indices:
            t0 = time.perf_counter()
            embeddings[i] = pipe.encode_prompt(job.prompts[i], job.negative_prompt, do_cfg, job.clean_caption, device=device)
            self.seconds_encode[i] = time.perf_counter() - t0
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
        from ..pipelines.caching import make_cache

        started = time.perf_counter()
        pipe, embeddings = self.load()
        cache = make_cache(self.plan.cache, self.plan.cache_threshold, self.plan.repository.sampling)
        if cache is not None:
            cache.attach(pipe.transformer)
        interval = self.guidance_interval()  # steps outside it run the conditional half alone
        callbacks = [c for c in (cache, interval) if c is not None]
        try:
            records = []
            for prompt_index, encoded in embeddings.items():
                with oom_as_error("sampling", "use fewer --num-videos, a smaller --height/--width, or --offload"):
                    latents, seconds_denoise = self.denoise(pipe, prompt_index, encoded, callbacks)
                    records += self.write(pipe, prompt_index, self.plan.job.prompts[prompt_index], encoded, latents, seconds_denoise, cache, interval)
        finally:
            if cache is not None:
                cache.detach()
        return SamplingSummary(self.gather(records), time.perf_counter() - started, self.plan.parallel.rank, self.seconds_load)

    def guidance_interval(self) -> Any:
        """The plan's `GuidanceInterval` callback (None without one)."""
        if self.plan.guidance_interval is None:
            return None
        from ..pipelines.denoising import GuidanceInterval

        return GuidanceInterval(*self.plan.guidance_interval)

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

        from ..pipelines.denoising import StepProgress

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

    def settings(self, pipe: Any, cache: Any, interval: Any = None) -> dict[str, Any]:
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
            "speed": plan.speed,  # the profile; the settings above and below are what it resolved to
            # uncached, every timestep run (an edit's from its cut) ran the transformer once
            "cache": cache.describe() if cache is not None else {"method": "none", "transformer_evaluations": pipe.num_timesteps},
        } | ({"parallel": plan.parallel.to_dict()} if plan.parallel.world_size > 1 else {}) | ({"guidance_interval": interval.describe()} if interval is not None else {})

    def write(self, pipe: Any, prompt_index: int, prompt: str, encoded: Any, latents: torch.Tensor, seconds_denoise: float, cache: Any, interval: Any = None) -> list[dict[str, Any]]:
        """Decode prompt `prompt_index`'s latents and write each video's files together."""
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

        settings = self.settings(pipe, cache, interval)
        models = {"model": job.model, "version": plan.version, "text_encoder": pipe.text_encoder_source}
        if plan.adapters:
            models["lora"] = [adapter.describe() for adapter in plan.adapters]
        scaling_factor = float(pipe.vae.config.scaling_factor)
        # a prompt's videos are encoded, denoised and decoded as one batch: each gets its share
        per_video = {"text_encoder": self.seconds_encode.get(prompt_index, 0.0), "denoise": seconds_denoise, "decode": seconds_decode}
        seconds = {phase: round(value / len(videos), 3) for phase, value in per_video.items()}
        records = []
        for k, video in enumerate(videos):
            paths = [plan.output_dir / name for name in video.names]
            video_path, sidecar = paths[0], paths[-1]
            record = sample_sidecar(prompt, job.negative_prompt, video.seed, settings, models, video_path, decoded[k], encoded.truncated[0], dict(seconds))
            # the summary gives absolute paths, the sidecar names its files relative to itself
            absolute = {"video": str(video_path.absolute()), "sidecar": str(sidecar.absolute())}
            latents_file = None
            if job.save_latents:
                # unscaled, with `osp vae encode`'s header, so `osp vae decode` gives this video
                header = latents_header(
                    plan.fps,
                    plan.frames,
                    plan.height,
                    plan.width,
                    scaling_factor,
                    plan.repository.vae_source,
                    dtype=settings["dtype"],  # `osp vae decode` decodes in it by default
                    source="osp t2v sample",
                    version=plan.version,
                    text_encoder=pipe.text_encoder_source,
                    scheduler=settings["scheduler"],
                    steps=plan.steps,
                    guidance=plan.guidance,
                    prompt=prompt,
                    negative_prompt=job.negative_prompt,
                    seed=video.seed,
                )
                latents_file = LatentsFile(paths[1], (latents[k : k + 1].float() / scaling_factor).cpu(), header)
                record["latents"] = paths[1].name
                absolute["latents"] = str(paths[1].absolute())
            write_video_files(video_path, decoded[k], plan.fps, sidecar, record, latents_file, overwrite=job.overwrite)  # one frame: a PNG
            records.append({**record, **absolute})
        return records


def compile_blocks(transformer: Any) -> None:
    """torch.compile each transformer block in place (regional compilation: one compiled
    graph serves every block of a kind, so compiling costs one block's time, not the model's)."""
    for block in [*transformer.transformer_blocks, *transformer.temporal_transformer_blocks]:
        block.compile()

