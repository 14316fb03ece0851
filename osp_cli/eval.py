"""`osp eval`: measure videos."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .console import counted, err, print_json, progress
from .options import ColorOpt, ColorsOpt, JsonOpt, ShapeOpt

app = typer.Typer(help="Measure videos: attributes of the shapes world, reconstruction quality.", no_args_is_help=True)


def _expected_captions(videos: list[Path], prompts: Path | None) -> list[str | None]:
    """Caption each video should show: --prompts lines, else a JSON sidecar's prompt, else the
    caption in a synthetic dataset's annotations.json, else None."""
    from osp_core.errors import InputError

    if prompts is not None:
        if not prompts.is_file():
            raise InputError(f"prompt file '{prompts}' does not exist", "check the path")
        lines = [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
        if len(lines) != len(videos):
            raise InputError(f"{len(lines)} prompts for {len(videos)} videos", "give one prompt per video, in the same order")
        return lines
    from osp_core.eval.compare import read_sidecar

    captions: list[str | None] = []
    annotation_cache: dict[Path, dict[str, str]] = {}
    for video in videos:
        caption = read_sidecar(video).get("prompt")
        if caption is None:
            annotation = video.parent.parent / "annotations.json"
            if annotation.is_file():
                if annotation not in annotation_cache:
                    try:
                        # by file name: `videos/00000.mp4` (osp data synth), or `00000.mp4` in older datasets
                        annotation_cache[annotation] = {Path(e["path"]).name: e["cap"] for e in json.loads(annotation.read_text())}
                    except (json.JSONDecodeError, KeyError, TypeError):
                        annotation_cache[annotation] = {}
                caption = annotation_cache[annotation].get(video.name)
        captions.append(caption)
    return captions


@app.command()
def shapes(
    videos: Annotated[list[Path], typer.Argument(help="Videos of the shapes world to measure.", show_default=False)],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="File with the caption of each video, one per line (default: the video's JSON sidecar or its dataset's annotations.json).")] = None,
    reference: Annotated[Path | None, typer.Option("--reference", help="Original clip (one video) or folder of originals with the same file names: adds PSNR/SSIM (for `osp vae recon` outputs).")] = None,
    color: ColorOpt = None,
    colors: ColorsOpt = None,
    shape: ShapeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Color, shape and motion direction of each video, graded against its caption. The judge
    answers with the colours and shapes of the world that --color, --colors and --shape describe
    (as `osp data synth` takes them): leave --colors out to grade a colour against all the others."""
    from rich.table import Table

    from osp_core.data.shapes import make_world, parse_caption
    from osp_core.errors import InputError
    from osp_core.io.paths import check_input_file

    world = make_world(color or (), colors or (), shape or ())
    expected = _expected_captions(videos, prompts)
    parsed = [None if caption is None else parse_caption(caption, world) for caption in expected]
    for video in videos:  # every video checked before the measuring libraries load
        check_input_file(video, "video")
    from osp_core.eval.compare import mean_finite
    from osp_core.eval.shapes import accuracy, measure
    from osp_core.io import read_video
    from osp_core.metrics import psnr, ssim

    rows = []
    for video, caption, answer in zip(videos, expected, parsed):
        frames = read_video(video).frames
        row = {"video": str(video), **measure(frames, world).to_dict(), "caption": caption}
        if answer is not None:
            row["expected_color"], row["expected_shape"], row["expected_direction"] = answer
        if reference is not None:
            original = reference / video.name if reference.is_dir() else reference
            if not original.is_file():
                raise InputError(f"no reference clip '{original}' for '{video}'", "pass --reference with the original clips (same file names)")
            ref = read_video(original).frames
            n = min(len(ref), len(frames))
            if ref.shape[1:] != frames.shape[1:]:
                raise InputError(f"'{video}' is {tuple(frames.shape[1:3])}, its reference {tuple(ref.shape[1:3])}", "compare videos of the same size")
            row["psnr"], row["ssim"] = round(psnr(ref[:n], frames[:n]), 3), round(ssim(ref[:n], frames[:n]), 4)
        rows.append(row)
    summary = {
        "videos": len(rows),
        "color_accuracy": accuracy(rows, "color"),
        "shape_accuracy": accuracy(rows, "shape"),
        "direction_accuracy": accuracy(rows, "direction"),
        "psnr": mean_finite([r.get("psnr") for r in rows]) if reference is not None else None,
        "ssim": mean_finite([r.get("ssim") for r in rows]) if reference is not None else None,
    }
    if json_out:
        print_json({"summary": summary, "videos": rows})
        return
    table = Table(title="shapes world")
    for column in ("video", "caption", "color", "shape", "direction", "fill", *(("PSNR", "SSIM") if reference is not None else ())):
        table.add_column(column)
    for r in rows:
        mark = lambda key: r[key] if r.get(f"expected_{key}") in (None, r[key]) else f"[red]{r[key]}[/red]"  # noqa: E731
        cells = [Path(r["video"]).name, r["caption"] or "-", mark("color"), mark("shape"), mark("direction"), f"{r['fill_ratio']:.2f}"]
        if reference is not None:
            cells += [f"{r['psnr']:.2f}", f"{r['ssim']:.4f}"]
        table.add_row(*[str(c) for c in cells])
    err.print(table)
    for key in ("color", "shape", "direction"):
        value = summary[f"{key}_accuracy"]
        if value is not None:
            err.print(f"{key} correct: {value:.1%}")
    if reference is not None:
        err.print(f"mean PSNR {summary['psnr']:.2f} dB, mean SSIM {summary['ssim']:.4f}")


@app.command("edit")
def edit(
    videos: Annotated[list[Path], typer.Argument(help="Outputs of `osp edit` (each read with its JSON sidecar: source, region, first frame, tracks).", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """How well each edit did what was asked: PSNR outside the region, the edited object's colour and shape, trajectory error, first-frame fidelity."""
    from rich.table import Table

    from osp_core.jobs.records import read_edit_sidecar

    for video in videos:  # every sidecar checked before the measuring libraries load
        read_edit_sidecar(video)
    from osp_core.eval.edit import evaluate_sidecar, summarize

    rows = [{"video": str(video), **evaluate_sidecar(video)} for video in videos]
    summary = summarize(rows)
    if json_out:
        print_json({"summary": summary, "edits": rows})
        return
    table = Table(title="edits")
    for column in ("video", "PSNR outside", "colour", "shape", "trajectory error (px)", "first frame PSNR"):
        table.add_column(column)

    def mark(r: dict, key: str) -> str:
        return str(r[key]) if r[key] == r[f"expected_{key}"] else f"[red]{r[key]}[/red] (want {r[f'expected_{key}']})"

    for r in rows:
        error = "-" if r["trajectory_error"] is None else f"{r['trajectory_error']:.2f}"
        table.add_row(Path(r["video"]).name, f"{r['psnr_outside']:.2f}", mark(r, "color"), mark(r, "shape"), error, f"{r['first_frame_psnr']:.2f}")
    err.print(table)
    parts = [counted(summary['edits'], 'edit'), f"outside PSNR {summary['psnr_outside']:.2f} dB"]
    for key in ("color", "shape"):
        if summary[f"{key}_accuracy"] is not None:
            parts.append(f"{key} correct {summary[f'{key}_accuracy']:.1%}")
    if summary["trajectory_error"] is not None:
        parts.append(f"trajectory error {summary['trajectory_error']:.2f} px")
    parts.append(f"first-frame PSNR {summary['first_frame_psnr']:.2f} dB")
    err.print(", ".join(parts))


@app.command()
def compare(
    reference: Annotated[Path, typer.Argument(help="Folder of reference videos (e.g. `osp t2v sample -o REF` at the default settings).", show_default=False)],
    candidate: Annotated[Path, typer.Argument(help="Folder of videos made from the same prompts and seeds with the settings to judge.", show_default=False)],
    lpips_weights: Annotated[str | None, typer.Option("--lpips-weights", help="LPIPS weights (VGG16 + linear heads) as a .safetensors file or REPO_ID:FILENAME: adds LPIPS (default: PSNR and SSIM only).")] = None,
    judge: Annotated[str, typer.Option("--judge", help="auto: grade shapes-world videos (sidecars naming builtin:shapes) against their prompts; shapes: always; none: never.")] = "auto",
    json_out: JsonOpt = False,
) -> None:
    """PSNR, SSIM (and LPIPS) of each candidate video against the reference of the same name,
    with both sides' denoising seconds and transformer evaluations from their sidecars."""
    from osp_core.errors import InputError
    from osp_core.eval.compare import pair_videos, wants_shapes_judge

    if judge not in ("auto", "shapes", "none"):
        raise InputError(f"unknown --judge '{judge}'", "use auto, shapes or none")
    pairs, only_reference, only_candidate = pair_videos(reference, candidate)
    lpips = None
    if lpips_weights is not None:
        from osp_core.train.losses import build_lpips, load_lpips_state

        lpips = build_lpips(load_lpips_state(lpips_weights))
    from osp_core.eval.compare import compare_pair, judge_shapes, summarize

    grade = judge_shapes if judge == "shapes" or (judge == "auto" and wants_shapes_judge(pairs)) else None
    rows = []
    with progress(transient=True) as bar:
        task = bar.add_task(f"comparing {counted(len(pairs), 'video')}", total=len(pairs))
        for pair in pairs:
            rows.append(compare_pair(pair, lpips, grade))
            bar.advance(task)
    summary = {**summarize(rows), "only_in_reference": only_reference, "only_in_candidate": only_candidate}
    if not summary["videos"]:
        raise InputError(f"none of the {len(rows)} video pairs could be read: {rows[0]['error']}", "compare folders of readable videos")
    if json_out:
        print_json({"summary": summary, "videos": rows})
        return
    _print_comparison(rows, summary)


def _print_comparison(rows: list[dict], summary: dict) -> None:
    from rich.table import Table

    number = lambda value, digits: "-" if value is None else ("inf" if value == float("inf") else f"{value:.{digits}f}")  # noqa: E731
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    judged = any("judge" in r["candidate"] for r in rows)
    table = Table(title="candidate against reference")
    for column in ("video", "PSNR", "SSIM", "LPIPS", "denoise s (ref/cand)", "evaluations (ref/cand)", *(("judge (ref/cand)",) if judged else ())):
        table.add_column(column, overflow="fold")
    for r in rows:
        ref, cand = r["reference"], r["candidate"]
        cells = [
            r["video"], number(r["psnr"], 2), number(r["ssim"], 4), number(r["lpips"], 4),
            f"{number(ref['denoise_seconds'], 2)} / {number(cand['denoise_seconds'], 2)}",
            f"{ref['transformer_evaluations'] or '-'} / {cand['transformer_evaluations'] or '-'}",
        ]  # fmt: skip
        if judged:
            mark = lambda j: "-" if j is None else ("ok" if j["correct"] else f"{j['color']} {j['shape']} {j['direction']}")  # noqa: E731
            cells.append(f"{mark(ref.get('judge'))} / {mark(cand.get('judge'))}")
        table.add_row(*cells)
    err.print(table)
    line = f"{counted(summary['videos'], 'video')}: mean PSNR {number(summary['psnr'], 2)} dB, SSIM {number(summary['ssim'], 4)}"
    if summary["lpips"] is not None:
        line += f", LPIPS {summary['lpips']:.4f}"
    if summary["denoise_speedup"] is not None:
        line += f"; denoising {summary['reference']['denoise_seconds']:.1f} s -> {summary['candidate']['denoise_seconds']:.1f} s ({summary['denoise_speedup']:.2f}x)"
    err.print(line)
    if judged:
        err.print(f"judge accuracy: reference {summary['reference'].get('judge_accuracy', 0):.1%}, candidate {summary['candidate'].get('judge_accuracy', 0):.1%}")
    for r in failed:
        err.print(f"[yellow]not compared: {r['error']}[/yellow]")
    for side, names in (("reference", summary["only_in_reference"]), ("candidate", summary["only_in_candidate"])):
        if names:
            err.print(f"[yellow]{len(names)} videos only in the {side} folder (not compared), e.g. {names[0]}[/yellow]")
