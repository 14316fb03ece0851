"""`osp caption`: split, filter and caption videos (or images) into Open-Sora-Plan annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from osp_core.caption import defaults
from osp_core.parallel.layout import is_main_process

from .options import DeviceOpt, DtypeOpt, JsonOpt, job_from_options

app = typer.Typer()


class _BarProgress:
    """Draws the runner's progress as a rich bar: clips done, clips/s and ETA."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from .console import InterruptibleProgress, err

        self.enabled = enabled
        self.bar = InterruptibleProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self.task = None
        self.counts: dict[str, int] = {}

    def __enter__(self) -> _BarProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def phase(self, name: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(name, total=total, completed=completed, rate="")

    def advance(self, status: str) -> None:
        if self.task is None:
            return
        self.counts[status] = self.counts.get(status, 0) + 1
        self.bar.advance(self.task)
        speed = self.bar.tasks[-1].speed
        unit = "clips" if self.bar.tasks[-1].description == "captioning" else "files"
        self.bar.update(self.task, rate=f"{speed:.2f} {unit}/s" if speed else "")


def _print_summary(summary) -> None:
    from rich.table import Table

    from .console import err

    data = summary.to_dict()
    table = Table(title="osp caption", show_header=False, box=None)
    table.add_row("annotations", f"{data['output']} ({data['captioned']} clips)")
    table.add_row("dataset root", data["root"])
    table.add_row("captioned", f"{data['captioned']} ({data['not_english']} flagged not English)")
    dropped = ", ".join(f"{k} {v}" for k, v in data["dropped"].items()) or "none"
    table.add_row("dropped", f"{data['dropped_total']} ({dropped})")
    table.add_row("failed", str(data["failed_total"]))
    table.add_row("this run", f"{data['processed']} clips in {data['seconds']:.1f} s ({data['clips_per_second']:.2f} clips/s), {data['resumed']} already done")
    err.print(table)
    for failure in data["failed"][:10]:
        where = f"{failure['path']}" + (f" [{failure['frame_idx']}]" if "frame_idx" in failure else "")
        err.print(f"  failed: {where}: {failure['reason']}", markup=False, highlight=False)
    if data["failed_total"] > 10:
        err.print(f"  ... and {data['failed_total'] - 10} more (see --json)")
    err.print(f"train with a data list line: {data['root']},{data['output']}", markup=False, highlight=False)


@app.command("caption")
def caption(
    inputs: Annotated[list[Path], typer.Argument(help="Folders (walked recursively), video/image files, or list files (.txt, .json, .jsonl).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Annotation file to write (Open-Sora-Plan JSON).", show_default=False)],
    images: Annotated[bool, typer.Option("--images", help="Caption images instead of videos (v1.1.0 image prompts).")] = False,
    root: Annotated[Path | None, typer.Option("--root", help="Folder the annotation paths are relative to (default: the input folder, else the common folder of all files).")] = None,
    clip_frames: Annotated[int | None, typer.Option("--clip-frames", help="Cut videos into clips of N frames (recorded as frame_idx, not re-encoded).")] = None,
    clip_stride: Annotated[int | None, typer.Option("--clip-stride", help="Frames between clip starts (default: --clip-frames, no overlap).")] = None,
    min_duration: Annotated[float, typer.Option("--min-duration", help="Drop clips shorter than this many seconds.")] = 0.0,
    max_duration: Annotated[float | None, typer.Option("--max-duration", help="Drop clips longer than this many seconds.")] = None,
    min_height: Annotated[int, typer.Option("--min-height", help="Drop clips/images less than this many pixels high.")] = 0,
    min_width: Annotated[int, typer.Option("--min-width", help="Drop clips/images less than this many pixels wide.")] = 0,
    min_aspect: Annotated[float | None, typer.Option("--min-aspect", help="Drop clips/images with width/height below this.")] = None,
    max_aspect: Annotated[float | None, typer.Option("--max-aspect", help="Drop clips/images with width/height above this.")] = None,
    min_motion: Annotated[float, typer.Option("--min-motion", help="Drop clips whose motion score (mean frame difference, gray levels 0-255, on 64-px frames 1/4 s apart; first vs last frame for shorter clips) is below this; 0 turns it off (1-frame clips count as too_short while it is on).")] = defaults.MIN_MOTION,
    model: Annotated[str, typer.Option("--model", "-m", help="Vision-language model: Hub repo id or local folder (any transformers image-text-to-text model with a chat template).")] = defaults.DEFAULT_CAPTION_MODEL,
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames sampled uniformly per clip for the captioner.")] = defaults.NUM_FRAMES,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Clips per generate call (a crash loses at most one batch).")] = defaults.BATCH_SIZE,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest caption, in tokens.")] = defaults.MAX_NEW_TOKENS,
    frame_size: Annotated[int, typer.Option("--frame-size", help="Longest side of the frames given to the captioner, pixels.")] = defaults.FRAME_SIZE,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Prompt template: a name in presets/caption/ (video, image, image_ocr) or a .yaml file; templates with fields need a .json/.jsonl list giving cap/ocr for every file.")] = None,
    frames_as: Annotated[str, typer.Option("--frames-as", help="auto, images or video: how frames reach the model (video needs torchvision).")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: skip clips already in the journal.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an existing output and its journal and start over (only once inputs, prompt and model have been checked).")] = False,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Split videos into clips, drop near-static, short or small ones, and caption the rest with a VLM.

    Writes OUTPUT, an Open-Sora-Plan annotation list (path, cap, frame_idx, fps, num_frames, resolution, motion_score, caption_model, is_english), and OUTPUT.journal/, the record that --resume continues from. Under torchrun each rank takes every WORLD_SIZE-th file and rank 0 merges the results.
    """
    from osp_core.caption import CaptionJob, FilterConfig, run_caption

    from .console import err, print_json

    job = job_from_options(CaptionJob, locals(), inputs=list(inputs), filters=job_from_options(FilterConfig, locals()))
    with _BarProgress(enabled=is_main_process() and err.is_terminal) as bar:
        summary = run_caption(job, progress=bar)
    if not summary.is_main:
        return
    if json_out:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
