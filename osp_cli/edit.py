"""`osp edit`: change a region of a video (an edited first frame, a new motion), keep the rest.

`osp edit VIDEO -o OUT.mp4 --box ...` runs the default command (`osp edit video`); the group
holds the other edit commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from . import edit_train, t2v_lora
from .console import err, print_json
from .options import DEFAULT_MODEL, CacheOpt, CacheThresholdOpt, DeviceOpt, DtypeOpt, GuidanceIntervalOpt, JsonOpt, ModelOpt, SpeedOpt, job_from_options


class _DefaultVideoGroup(TyperGroup):
    """`osp edit VIDEO ...` means `osp edit video VIDEO ...`: the edit itself needs no word."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["video", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultVideoGroup, help="Edit a video: new content (an edited first frame) and motion (tracks) in a region, everything else kept (`osp edit VIDEO -o OUT.mp4 --box X0,Y0,X1,Y1 ...`), or the whole video under a new prompt (`--whole-frame --prompt TEXT`).", no_args_is_help=True)


@app.command("video")
def edit_video(
    video: Annotated[Path, typer.Argument(help="The video to edit (frames 4k+1, or --frames auto; sides a multiple of 16).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The edited mp4 (its JSON sidecar is written beside it).", show_default=False)],
    box: Annotated[str | None, typer.Option("--box", help="Region X0,Y0,X1,Y1 in pixels of the video (x right, y down, end exclusive), the same in every frame.")] = None,
    mask: Annotated[Path | None, typer.Option("--mask", help="Region as a mask image (every frame) or mask video; white = edit.")] = None,
    first_frame: Annotated[Path | None, typer.Option("--first-frame", help="The edited first frame (same size as the video); default: the source's (a motion-only edit).")] = None,
    prompt: Annotated[str, typer.Option("--prompt", help="Describes the edited video.")] = "",
    track: Annotated[list[str] | None, typer.Option("--track", help="A moving point X0,Y0:X1,Y1, linear over the frames (repeatable, one per point).")] = None,
    track_file: Annotated[Path | None, typer.Option("--track-file", help="JSON tracks, [[\\[x, y], ...one per frame], ...one per track].")] = None,
    keep_motion: Annotated[bool, typer.Option("--keep-motion", help="Take the region's motion from the source (Lucas-Kanade tracking); the default without tracks.")] = False,
    whole_frame: Annotated[bool, typer.Option("--whole-frame", help="Re-render the whole video with --prompt (a remix): its latents noised to --strength (default 0.6) and denoised, nothing held; no region, first frame or tracks.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="auto (control when the model has an edit module, else blend), control or blend (training-free).")] = "auto",
    strength: Annotated[float | None, typer.Option("--strength", help="How far the region is re-noised, in (0, 1]: below 1 only the last S of the steps run, from the edited first frame's region moved along the tracks. Default: the model's sampling.json edit_strength, else 1.", show_default=False)] = None,
    model: ModelOpt = DEFAULT_MODEL,
    frames: Annotated[str | None, typer.Option("--frames", "-f", help="Frames to edit: N (4k+1) or auto (the longest 4k+1 prefix). Default: every frame (must be 4k+1).", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps of the whole schedule (the edit runs the last --strength of them). Default: the --speed profile's, else the model's.", show_default=False)] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale. Default: the model's.", show_default=False)] = None,
    cache: CacheOpt = None,
    cache_threshold: CacheThresholdOpt = None,
    guidance_interval: GuidanceIntervalOpt = None,
    speed: SpeedOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (default: a random one, written to the sidecar).")] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (default: refuse).")] = False,
    lora: t2v_lora.LoraOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Edit VIDEO inside a region (or all of it with --whole-frame) and write OUT.mp4 + OUT.json."""
    from osp_core.jobs.edit import EditJob, run_edit

    from .t2v import SamplingBar

    job = job_from_options(EditJob, locals(), tracks=list(track or []), lora=list(lora or []))
    with SamplingBar(enabled=not json_out) as bar:
        summary = run_edit(job, progress=bar)
    if json_out:
        print_json(summary.to_dict())
    else:
        err.print(f"[green]wrote[/green] {escape(summary.record['video'])} ({summary.record['engine']} engine)")


app.command("train")(edit_train.train)
