"""`osp t2v`: text-to-video sampling with the Open-Sora-Plan v1.1.0 weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from osp_core.jobs.sampling_plan import DEFAULT_OUTPUT

from . import t2v_lora, t2v_train
from .console import JobBar, err, print_json
from .options import DEFAULT_MODEL, CacheOpt, CacheThresholdOpt, DeviceOpt, DtypeOpt, GuidanceIntervalOpt, JsonOpt, ModelOpt, SpeedOpt, TileOpt, job_from_options

if TYPE_CHECKING:
    from osp_core.jobs.sampling_plan import SamplingJob

app = typer.Typer(help="Text-to-video: sample videos from prompts with LatteT2V + T5 + CausalVideoVAE, and training.", no_args_is_help=True)


# options `sample` and `calibrate-cache` share
PromptArg = Annotated[list[str] | None, typer.Argument(help="The prompt (words are joined with spaces).", show_default=False)]
PromptsOpt = Annotated[str | None, typer.Option("--prompts", help="File with one prompt per line ('-' reads stdin).")]
FramesOpt = Annotated[int | None, typer.Option("--frames", "-f", help="Video frames, 4k+1 (65: 2.7 s at 24 fps; 221: 9.2 s). Default: what the weights were trained on (65 for the released model).", show_default=False)]
HeightOpt = Annotated[int | None, typer.Option("--height", help="Height in pixels (multiple of 16). Default: the weights' (512).", show_default=False)]
WidthOpt = Annotated[int | None, typer.Option("--width", help="Width in pixels (multiple of 16). Default: the weights' (512).", show_default=False)]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Denoising steps. Default: the --speed profile's, else the model's sampling.json, else 150.", show_default=False)]
GuidanceOpt = Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale (1 turns it off). Default: the model's sampling.json, else 7.5.", show_default=False)]
NegativeOpt = Annotated[str, typer.Option("--negative-prompt", help="What the video should not show.")]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", help="PNDM, DDIM, DDPM, EulerDiscrete, EulerAncestralDiscrete, DPMSolverMultistep, DPMSolverSinglestep, HeunDiscrete, DEISMultistep or KDPM2AncestralDiscrete. Default: the --speed profile's, else the model's sampling.json, else PNDM.", show_default=False)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: a random one, written to the sidecar). Video k of a run uses seed + k.")]
NumVideosOpt = Annotated[int, typer.Option("--num-videos", "-n", help="Videos per prompt.")]
VersionOpt = Annotated[str | None, typer.Option("--version", help="Transformer weights folder, e.g. 65x512x512 (default: picked by --frames, else the shortest).")]
TextEncoderOpt = Annotated[str | None, typer.Option("--text-encoder", help="T5 repo id or folder (default: the model's text_encoder/ or DeepFloyd/t5-v1_1-xxl).")]
TransformerOpt = Annotated[Path | None, typer.Option("--transformer", help="LatteT2V folder replacing the --version weights, e.g. a training checkpoint's model/ or model_ema/.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="Attention backend: auto (npu on Ascend, else sdpa), sdpa, math, flash (flash-attn, CUDA) or npu (torch_npu).")]


@app.command()
def sample(
    prompt: PromptArg = None,
    prompts_file: PromptsOpt = None,
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    negative_prompt: NegativeOpt = "",
    scheduler: SchedulerOpt = None,
    seed: SeedOpt = None,
    num_videos: NumVideosOpt = 1,
    fps: Annotated[float | None, typer.Option("--fps", help="Frame rate of the written mp4. Default: the model's sampling.json, else 24.", show_default=False)] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the mp4 files and their JSON sidecars.")] = DEFAULT_OUTPUT,
    save_latents: Annotated[bool, typer.Option("--save-latents", help="Also write the final latents, unscaled as `osp vae encode` writes them (decode with `osp vae decode`).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs of an earlier run with the same prompt and seed (default: refuse).")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    version: VersionOpt = None,
    text_encoder: TextEncoderOpt = None,
    transformer: TransformerOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: Annotated[bool, typer.Option("--offload", help="Keep models on the CPU and move each to the device only while it runs.")] = False,
    tile: TileOpt = None,
    clean_caption: Annotated[bool, typer.Option("--clean-caption", help="Clean prompts like the PixArt/DeepFloyd captioner (needs beautifulsoup4, ftfy).")] = False,
    attention: AttentionOpt = "auto",
    cache: CacheOpt = None,
    cache_threshold: CacheThresholdOpt = None,
    guidance_interval: GuidanceIntervalOpt = None,
    speed: SpeedOpt = None,
    compile_blocks: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer blocks (regional compilation).")] = False,
    parallel: Annotated[str | None, typer.Option("--parallel", help="Under torchrun, how the processes share the job: data (videos over ranks), cfg (guidance halves on 2 ranks), sp (each video's frames and patches over all ranks), cfg+sp, or auto (default under torchrun).", show_default=False)] = None,
    lora: t2v_lora.LoraOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Generate one mp4 (+ JSON sidecar) per prompt and video (under torchrun, one per video, not per process)."""
    from osp_core.jobs.sampling import run_sampling

    job = _sampling_job(locals(), compile=compile_blocks)
    with SamplingBar(enabled=not json_out) as bar:
        summary = run_sampling(job, progress=bar)
    if summary.rank != 0:  # under torchrun the first process reports for all
        return
    if json_out:
        print_json(summary.to_dict())
    else:
        for video in summary.videos:
            err.print(f"[green]wrote[/green] {escape(video['video'])}")


@app.command("calibrate-cache")
def calibrate_cache(
    prompt: PromptArg = None,
    prompts_file: PromptsOpt = None,
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    negative_prompt: NegativeOpt = "",
    scheduler: SchedulerOpt = None,
    seed: SeedOpt = None,
    num_videos: NumVideosOpt = 1,
    model: ModelOpt = DEFAULT_MODEL,
    version: VersionOpt = None,
    text_encoder: TextEncoderOpt = None,
    transformer: TransformerOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    attention: AttentionOpt = "auto",
    method: Annotated[str, typer.Option("--method", help="teacache (fit the polynomial) or magcache (fit the per-step magnitude ratios).")] = "teacache",
    degree: Annotated[int, typer.Option("--degree", help="Degree of TeaCache's fitted polynomial.")] = 4,
    write: Annotated[bool, typer.Option("--write", help="Store the fit in the model folder's sampling.json (teacache_coefficients, or magcache_ratios and magcache_scheduler).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fit a cache's values for a model: TeaCache's coefficients or MagCache's ratios (sampling.json).

    Samples the prompts without caching and records how the transformer's input and output change from step to step.
    """
    from osp_core.jobs.calibrate import calibrate_cache as run_calibration

    job = _sampling_job(locals())
    with SamplingBar(enabled=not json_out) as bar:
        fit = run_calibration(job, method=method, degree=degree, write=write, progress=bar)
    if json_out:
        print_json(fit.to_dict())
        return
    values = ", ".join(f"{c:.8g}" for c in fit.coefficients)
    if fit.method == "magcache":
        err.print(f"MagCache ratios ({fit.steps} steps per run, {fit.sampling['scheduler']}): [{values}]")
    else:
        err.print(f"TeaCache coefficients ({fit.steps} steps, rms error {fit.rms_error:.3g}): [{values}]")
    if fit.written:
        err.print(f"[green]wrote[/green] {escape(fit.written)}")


def _sampling_job(options: dict[str, Any], **given: Any) -> SamplingJob:
    """The job of `sample` or `calibrate-cache`: the prompts read, each other option named like a
    SamplingJob field filling it."""
    from osp_core.jobs.sampling_plan import SamplingJob, read_prompts

    return job_from_options(SamplingJob, options, prompts=read_prompts(options["prompt"], options["prompts_file"]), lora=options.get("lora") or [], **given)


class SamplingBar(JobBar):
    """Draws a sampling run's progress on stderr: a spinner while loading and encoding, then a
    bar per prompt."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled=enabled)

    def video(self, index: int, total: int, prompt: str) -> None:
        self.new_bar(f"video {index + 1}/{total}")

    def notice(self, kind: str, message: str) -> None:
        colour = "yellow" if kind == "warning" else "cyan"
        err.print(f"[{colour}]{kind}:[/{colour}] {escape(message)}", soft_wrap=True)


app.command("train")(t2v_train.train)
app.add_typer(t2v_lora.app, name="lora")
