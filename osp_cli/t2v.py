"""`osp t2v`: text-to-video sampling with the Open-Sora-Plan v1.1.0 weights."""

from __future__ import annotations

import functools

import logging
import re
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import t2v_train
from .console import err, print_json, progress
from .options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, TileOpt

if TYPE_CHECKING:  # heavy imports stay inside the command, so `osp --help` is fast
    import torch

app = typer.Typer(help="Text-to-video: sample videos from prompts with LatteT2V + T5 + CausalVideoVAE, and training.", no_args_is_help=True)

DEFAULT_OUTPUT = Path("samples/t2v")
SLUG_CHARS = 48


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """Prompts from the arguments, or one per non-blank line of a file ('-' = stdin)."""
    from osp_core.errors import InputError

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
        raise InputError("no prompt given", 'pass a prompt, e.g. osp t2v sample "a shiba inu in a beret", or --prompts FILE')
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


def output_files(prompts: list[str], seed: int, num_videos: int, save_latents: bool) -> list[str]:
    """Every file name a run writes (mp4, sidecar, latents), in order."""
    suffixes = (".mp4", ".json") + ((".latents.safetensors",) if save_latents else ())
    return [f"{slugify(p)}-{s}{suffix}" for i, p in enumerate(prompts) for s in video_seeds(i, seed, num_videos) for suffix in suffixes]


def check_no_overwrite(output_dir: Path, names: list[str]) -> None:
    """Raise `InputError` when any output already exists (earlier runs are not replaced silently)."""
    from osp_core.errors import InputError

    existing = [output_dir / name for name in names if (output_dir / name).exists()]
    if existing:
        what = f"'{existing[0]}' and {len(existing) - 1} more outputs already exist" if len(existing) > 1 else f"'{existing[0]}' already exists"
        raise InputError(what, "pass --overwrite to replace them, or choose another --seed or --output-dir")


def folders_to_create(directory: Path) -> list[Path]:
    """The folders `directory.mkdir(parents=True)` would create, innermost first."""
    missing = []
    current = directory.absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders this run created if nothing was written into them (innermost first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone: leave it
            return


@app.command()
def sample(
    prompt: Annotated[list[str] | None, typer.Argument(help="The prompt (words are joined with spaces).", show_default=False)] = None,
    prompts_file: Annotated[str | None, typer.Option("--prompts", help="File with one prompt per line ('-' reads stdin).")] = None,
    frames: Annotated[int | None, typer.Option("--frames", "-f", help="Video frames, 4k+1 (65: 2.7 s at 24 fps; 221: 9.2 s). Default: what the weights were trained on (65 for the released model).", show_default=False)] = None,
    height: Annotated[int | None, typer.Option("--height", help="Height in pixels (multiple of 16). Default: the weights' (512).", show_default=False)] = None,
    width: Annotated[int | None, typer.Option("--width", help="Width in pixels (multiple of 16). Default: the weights' (512).", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps. Default: the model's sampling.json, else 150.", show_default=False)] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale (1 turns it off). Default: the model's sampling.json, else 7.5.", show_default=False)] = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="What the video should not show.")] = "",
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="PNDM, DDIM, DDPM, EulerDiscrete, EulerAncestralDiscrete, DPMSolverMultistep, DPMSolverSinglestep, HeunDiscrete, DEISMultistep or KDPM2AncestralDiscrete. Default: the model's sampling.json, else PNDM.", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: a random one, written to the sidecar). Video k of a run uses seed + k.")] = None,
    num_videos: Annotated[int, typer.Option("--num-videos", "-n", help="Videos per prompt.")] = 1,
    fps: Annotated[float | None, typer.Option("--fps", help="Frame rate of the written mp4. Default: the model's sampling.json, else 24.", show_default=False)] = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for the mp4 files and their JSON sidecars.")] = DEFAULT_OUTPUT,
    save_latents: Annotated[bool, typer.Option("--save-latents", help="Also write the final latents, unscaled as `osp vae encode` writes them (decode with `osp vae decode`).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs of an earlier run with the same prompt and seed (default: refuse).")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    version: Annotated[str | None, typer.Option("--version", help="Transformer weights folder, e.g. 65x512x512 (default: picked by --frames, else the shortest).")] = None,
    text_encoder: Annotated[str | None, typer.Option("--text-encoder", help="T5 repo id or folder (default: the model's text_encoder/ or DeepFloyd/t5-v1_1-xxl).")] = None,
    transformer: Annotated[Path | None, typer.Option("--transformer", help="LatteT2V folder replacing the --version weights, e.g. a training checkpoint's model/ or model_ema/.")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: Annotated[bool, typer.Option("--offload", help="Keep models on the CPU and move each to the device only while it runs.")] = False,
    tile: TileOpt = None,
    clean_caption: Annotated[bool, typer.Option("--clean-caption", help="Clean prompts like the PixArt/DeepFloyd captioner (needs beautifulsoup4, ftfy).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate one mp4 (+ JSON sidecar) per prompt and video."""
    # validate everything cheap before importing torch or loading gigabytes of weights
    from osp_core.errors import InputError, ModelLoadError
    from osp_core.hub import BUILTIN_PREFIX, resolve_model_dir
    from osp_core.pipelines.t2v_inputs import (
        RELEASED_VERSIONS,
        check_clean_caption_deps,
        check_steps,
        check_video_size,
        local_versions,
        locate_t5,
        parse_version,
        pick_version,
        sampling_defaults,
        scheduler_name,
        version_size,
    )

    prompts = read_prompts(prompt, prompts_file)
    # what the user gave is checked before any model folder is looked at
    check_video_size(frames, height, width)
    for name, value, low, example in (("--num-videos", num_videos, 1, "1"), ("--steps", steps, 1, "150")):
        if value is not None and value < low:
            raise InputError(f"{name} must be >= {low}, got {value}", f"pass e.g. {name} {example}")
    if fps is not None and fps <= 0:
        raise InputError(f"--fps must be > 0, got {fps}", "pass e.g. --fps 24")
    if guidance is not None and guidance < 0:
        raise InputError(f"--guidance must be >= 0, got {guidance}", "pass e.g. --guidance 7.5 (1 turns guidance off)")
    if seed is not None and not 0 <= seed < 2**63:
        raise InputError(f"--seed must be a non-negative 64-bit integer, got {seed}", "pass e.g. --seed 42")
    if scheduler is not None:
        scheduler = scheduler_name(scheduler)
    if clean_caption:
        check_clean_caption_deps()
    # a local repository tells which versions it has (and a missing one fails now, not after
    # the imports); a Hub repo has the released ones
    path = Path(model).expanduser()
    hub_id = not model.startswith(BUILTIN_PREFIX) and not path.exists() and model.count("/") == 1 and not model.startswith((".", "/", "~"))
    root = None if hub_id else resolve_model_dir(model)
    available = list(RELEASED_VERSIONS) if root is None else local_versions(root)
    # unset settings come from the model: its sampling.json, and the size its weights were
    # trained on (so `--model builtin:shapes` samples 17x64x64 at 8 fps without flags)
    defaults = sampling_defaults(root)
    fps = float(defaults["fps"]) if fps is None else fps
    steps = int(defaults["steps"]) if steps is None else steps
    guidance = float(defaults["guidance"]) if guidance is None else guidance
    scheduler = scheduler_name(str(defaults["scheduler"])) if scheduler is None else scheduler
    check_steps(scheduler, steps)
    picked = False
    if transformer is not None:
        if version is not None:
            raise InputError("--transformer and --version both choose the transformer weights", "pass only one of them")
        if not (transformer / "config.json").is_file():
            raise ModelLoadError(f"no config.json in transformer folder '{transformer}'", "pass a LatteT2V folder, such as a training checkpoint's model/ or model_ema/")
        version = str(transformer)
    elif version is None:
        # the shortest trained length that covers --frames (the shortest of all without it)
        version, picked = pick_version(1 if frames is None else frames, available), True
    elif parse_version(version) and version not in available:
        if hub_id:  # rejected before downloading anything
            raise ModelLoadError(
                f"version '{version}' is not a released version of '{model}' (released: {', '.join(RELEASED_VERSIONS)})",
                "pass one of the released versions, or --model DIR for a repository with other versions",
            )
        raise ModelLoadError(f"version '{version}' is not in '{model}' (available: {', '.join(available) or 'none'})", "pass --version with one of the available versions")
    size = version_size(version, available)
    frames, height, width = (size[i] if given is None else given for i, given in enumerate((frames, height, width)))
    check_video_size(frames, height, width)  # a folder name such as 10x30x30 gives no valid size
    frames_warning = None
    if transformer is None and frames > parse_version(version)[0]:
        # allowed (the temporal positions interpolate), but the user should know
        trained = parse_version(version)[0]
        reason = "longer than any trained length" if picked else f"longer than the {version} weights were trained on"
        frames_warning = f"[yellow]warning:[/yellow] {frames} frames is {reason}; using the {version} weights (trained on {trained} frames)"

    from osp_core.device import resolve
    from osp_core.io import ensure_writable_dir

    torch_device, torch_dtype = resolve(device, dtype)  # bad --device/--dtype before any Hub access
    # T5 is found and checked now where that is cheap: an explicit --text-encoder, a local
    # repository, or the released repository (known to have no text_encoder/: T5 comes from
    # DeepFloyd/t5-v1_1-xxl). Other Hub repositories: the pipeline does it right after download.
    if text_encoder is not None or root is not None or model == DEFAULT_MODEL:
        locate_t5(text_encoder, root)
    seed = secrets.randbelow(2**31) if seed is None else seed
    if not overwrite:
        check_no_overwrite(output_dir, output_files(prompts, seed, num_videos, save_latents))
    created = folders_to_create(output_dir)
    ensure_writable_dir(output_dir)
    if frames_warning:  # printed once everything is checked, so a failing run shows one line
        err.print(frames_warning, soft_wrap=True)
    try:
        summary = run_sampling(
            prompts=prompts,
            negative_prompt=negative_prompt,
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            scheduler=scheduler,
            seed=seed,
            num_videos=num_videos,
            fps=fps,
            output_dir=output_dir,
            save_latents=save_latents,
            model=model,
            version=version,
            transformer=transformer,
            text_encoder=text_encoder,
            torch_device=torch_device,
            torch_dtype=torch_dtype,
            offload=offload,
            tile=tile,
            clean_caption=clean_caption,
            show_progress=not json_out,
        )
    except BaseException:
        remove_empty(created)  # a failed run leaves no empty output folder behind
        raise
    if json_out:
        print_json(summary)
    else:
        for video in summary["videos"]:
            err.print(f"[green]wrote[/green] {video['video']}")


def _diffusers_errors_only(func):
    """Run `func` with diffusers logging at ERROR: the libraries' log lines (e.g.
    DPMSolverSinglestep's note on its final sigma with the default config) are not actionable
    here; our own warnings say what matters."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from diffusers.utils import logging as diffusers_logging

        previous = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            return func(*args, **kwargs)
        finally:
            diffusers_logging.set_verbosity(previous)

    return wrapper


@_diffusers_errors_only
def run_sampling(
    *,
    prompts: list[str],
    negative_prompt: str,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    scheduler: str,
    seed: int,
    num_videos: int,
    fps: float,
    output_dir: Path,
    save_latents: bool,
    model: str,
    version: str,
    transformer: Path | None,
    text_encoder: str | None,
    torch_device: torch.device,
    torch_dtype: torch.dtype,
    offload: bool,
    tile: bool | None,
    clean_caption: bool,
    show_progress: bool,
) -> dict:
    """Load, encode every prompt, free T5, denoise and decode; returns the --json summary
    (absolute paths; the sidecars name their files relative to themselves)."""
    import json

    import torch
    from diffusers.utils import logging as diffusers_logging
    from rich.markup import escape
    from transformers.utils import logging as transformers_logging

    import osp_core
    from osp_core.device import DTYPES
    from osp_core.hub import BUILTIN_PREFIX
    from osp_core.io import atomic_path, write_video
    from osp_core.pipelines.t2v import T2VPipeline
    from osp_core.pipelines.video_vae import configure_tiling
    from osp_core.pipelines.video_vae import save_latents as write_latents

    # our own progress bar and warnings replace the libraries' bars and log lines
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    logging.getLogger("osp_core.pipelines.t2v").setLevel(logging.ERROR)
    started = time.perf_counter()
    with err.status(f"loading {model} ({version}) ..."):
        pipe = T2VPipeline.from_pretrained(
            model,
            version=None if transformer is not None else version,
            transformer=transformer,
            text_encoder=text_encoder,
            scheduler=scheduler,
            torch_dtype=torch_dtype,
        )
    pipe.set_progress_bar_config(disable=True)
    configure_tiling(pipe.vae, tile)  # tiles only when the video exceeds a tile, unless --no-tile
    use_offload = offload and torch_device.type != "cpu"
    if offload and not use_offload:
        err.print("[yellow]note:[/yellow] --offload has no effect on the CPU")

    # T5 only encodes prompts: run it first, then drop it before the transformer needs the memory
    do_cfg = guidance > 1.0
    if use_offload:
        pipe.enable_model_cpu_offload(device=torch_device)
    else:
        pipe.text_encoder.to(torch_device)
    with err.status("encoding prompts ..."):
        # one prompt at a time, as the original loop (each cut to its own token count)
        embeddings = [pipe.encode_prompt(p, negative_prompt, do_cfg, clean_caption, device=torch_device) for p in prompts]
    for index, encoded in enumerate(embeddings):
        if encoded.truncated[0]:
            limit = pipe.transformer.config.model_max_length
            err.print(f"[yellow]warning:[/yellow] prompt {index + 1} is longer than {limit} tokens; cut: {escape(repr(encoded.truncated[0]))}", soft_wrap=True)
    if not use_offload:
        pipe.free_text_encoder()
        pipe.transformer.to(torch_device)
        pipe.vae.to(torch_device)

    dtype_name = next(name for name, value in DTYPES.items() if value == torch_dtype)
    settings = {
        "frames": frames,
        "height": height,
        "width": width,
        "steps": steps,
        "guidance": guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "fps": fps,
        "num_videos": num_videos,
        "device": str(torch_device),
        "dtype": dtype_name,
        "offload": use_offload,
        "tile": tile is not False,
        "clean_caption": clean_caption,
    }
    models = {"model": model, "version": version, "text_encoder": pipe.text_encoder_source}
    scaling_factor = float(pipe.vae.config.scaling_factor)
    # the keys `osp vae encode` writes (a local model folder as an absolute path, so
    # `osp vae decode` finds the VAE from any folder), then how the latents were sampled
    vae_source = model if model.startswith(BUILTIN_PREFIX) or not Path(model).expanduser().exists() else str(Path(model).expanduser().absolute())
    latent_header = {
        "fps": fps,
        "frames": frames,
        "height": height,
        "width": width,
        "scaling_factor": scaling_factor,
        "model": vae_source,
        "source": "osp t2v sample",
        "version": version,
        "text_encoder": pipe.text_encoder_source,
        "scheduler": settings["scheduler"],
        "steps": steps,
        "guidance": guidance,
    }
    videos = []
    with progress(transient=False) as bar:
        for prompt_index, (prompt, encoded) in enumerate(zip(prompts, embeddings)):
            seeds = video_seeds(prompt_index, seed, num_videos)
            # CPU generators: the same seed gives the same noise on every device
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            task = bar.add_task(f"video {prompt_index + 1}/{len(prompts)}", total=None, visible=show_progress)

            def on_step(step: int, total: int, _latents: torch.Tensor, task=task) -> None:
                bar.update(task, completed=step, total=total)

            t0 = time.perf_counter()
            latents = pipe(
                prompt_embeds=encoded,
                num_frames=frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                num_videos_per_prompt=num_videos,
                generator=generators,
                output_type="latent",
                callback=on_step,
            ).frames
            seconds_denoise = time.perf_counter() - t0
            t0 = time.perf_counter()
            decoded = pipe.decode_latents(latents)
            seconds_decode = time.perf_counter() - t0
            for k, video_seed in enumerate(seeds):
                stem = f"{slugify(prompt)}-{video_seed}"
                video_path = write_video(output_dir / f"{stem}.mp4", decoded[k], fps=fps)
                # the sidecar names its files relative to itself (the folder can move); the
                # --json summary gives absolute paths
                record = {
                    "prompt": prompt,
                    "negative_prompt": negative_prompt,
                    "seed": video_seed,
                    "settings": settings,
                    "models": models,
                    "video": video_path.name,
                    "num_frames": int(decoded.shape[1]),
                    "size": [int(decoded.shape[2]), int(decoded.shape[3])],
                    "truncated_prompt_part": encoded.truncated[0],
                    "seconds": {"denoise": round(seconds_denoise / num_videos, 3), "decode": round(seconds_decode / num_videos, 3)},
                    "osp_version": osp_core.__version__,
                }
                absolute = {"video": str(video_path.absolute())}
                if save_latents:
                    # unscaled, with `osp vae encode`'s header, so `osp vae decode` gives this video
                    latent_path = write_latents(
                        output_dir / f"{stem}.latents.safetensors",
                        (latents[k : k + 1].float() / scaling_factor).cpu(),
                        {**latent_header, "prompt": prompt, "negative_prompt": negative_prompt, "seed": video_seed},
                    )
                    record["latents"] = latent_path.name
                    absolute["latents"] = str(latent_path.absolute())
                sidecar = output_dir / f"{stem}.json"
                with atomic_path(sidecar) as tmp:
                    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
                absolute["sidecar"] = str(sidecar.absolute())
                videos.append({**record, **absolute})
    return {"videos": videos, "seconds_total": round(time.perf_counter() - started, 3)}


app.command("train")(t2v_train.train)
