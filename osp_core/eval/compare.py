"""Two folders of videos made from the same prompts and seeds, compared video by video.

`osp eval compare REF CAND` is how a faster setting (fewer steps, a cache, another scheduler)
is measured against a reference one: videos are matched by file name (`osp t2v sample` names
them by prompt and seed), each pair gets PSNR, SSIM and, given LPIPS weights, LPIPS, and the
sidecars' denoising seconds and transformer evaluations are set side by side. Videos of the
shapes world (`builtin:shapes`) are also graded against their captions on both sides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io.media import VIDEO_SUFFIXES

MAX_PAIRS = 10_000
SHAPES_MODEL = "builtin:shapes"


@dataclass(frozen=True)
class VideoPair:
    name: str  # the path relative to both folders
    reference: Path
    candidate: Path


def _videos(folder: Path) -> dict[str, Path]:
    # hidden folders hold unfinished or internal files (a server's attempt folders, .gradio)
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found[relative.as_posix()] = path
    return found


def pair_videos(reference: str | Path, candidate: str | Path) -> tuple[list[VideoPair], list[str], list[str]]:
    """Videos found under both folders by relative path, and the names found only under the
    reference and only under the candidate; refuses folders that share no video."""
    folders = []
    for role, folder in (("reference", reference), ("candidate", candidate)):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise InputError(f"{role} folder '{folder}' {state}", "pass two folders of videos (e.g. two `osp t2v sample -o` folders)")
        folders.append(folder)
    ref, cand = (_videos(f) for f in folders)
    names = sorted(ref.keys() & cand.keys())
    if not names:
        raise InputError(
            f"no video name is in both '{folders[0]}' ({len(ref)} videos) and '{folders[1]}' ({len(cand)} videos)",
            "sample both with the same prompts and --seed, so that the file names match",
        )
    if len(names) > MAX_PAIRS:
        raise InputError(f"{len(names)} videos to compare, more than {MAX_PAIRS}", "compare smaller folders")
    pairs = [VideoPair(name, ref[name], cand[name]) for name in names]
    return pairs, sorted(ref.keys() - cand.keys()), sorted(cand.keys() - ref.keys())


def read_sidecar(video: Path) -> dict[str, Any]:
    """The JSON sidecar `osp` wrote beside `video` ({} when there is none or it is unreadable)."""
    sidecar = video.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _count(value: Any) -> float | int | None:
    # a sidecar is a file anyone may have edited: only a finite, non-negative number counts
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


def _cost(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Denoising seconds and transformer evaluations a sidecar records (None where it does not)."""
    seconds = sidecar.get("seconds") if isinstance(sidecar.get("seconds"), dict) else {}
    settings = sidecar.get("settings") if isinstance(sidecar.get("settings"), dict) else {}
    cache = settings.get("cache") if isinstance(settings.get("cache"), dict) else {}
    return {"denoise_seconds": _count(seconds.get("denoise")), "transformer_evaluations": _count(cache.get("transformer_evaluations"))}


def _is_shapes(sidecar: dict[str, Any]) -> bool:
    models = sidecar.get("models") if isinstance(sidecar.get("models"), dict) else {}
    return models.get("model") == SHAPES_MODEL


def lpips_distance(lpips: Callable, reference, candidate) -> float:
    """Mean LPIPS over frames of two (T, H, W, 3) uint8 videos."""
    import torch

    to_unit = lambda frames: frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # noqa: E731
    with torch.no_grad():
        return float(lpips(to_unit(reference), to_unit(candidate)).mean())


def compare_pair(pair: VideoPair, lpips: Callable | None = None, judge: Callable | None = None) -> dict[str, Any]:
    """One row: the pair's PSNR/SSIM(/LPIPS), both sidecars' costs and, with `judge`, both
    videos graded against the prompt; a video that cannot be read gives a row with `error`."""
    from ..io import read_video
    from ..metrics import psnr, ssim

    try:
        ref, cand = read_video(pair.reference).frames, read_video(pair.candidate).frames
    except InputError as exc:
        return {"video": pair.name, "error": exc.message}
    if ref.shape != cand.shape:
        shape = lambda f: "x".join(str(n) for n in f.shape[:3])  # noqa: E731
        raise InputError(f"'{pair.name}' is {shape(ref)} in the reference and {shape(cand)} in the candidate", "compare videos sampled at the same frames and size")
    ref_sidecar, cand_sidecar = read_sidecar(pair.reference), read_sidecar(pair.candidate)
    value = psnr(ref, cand)
    row: dict[str, Any] = {
        "video": pair.name,
        "identical": math.isinf(value),
        "psnr": round(value, 3) if math.isfinite(value) else value,
        "ssim": round(ssim(ref, cand), 4),
        "lpips": round(lpips_distance(lpips, ref, cand), 4) if lpips is not None else None,
        "reference": _cost(ref_sidecar),
        "candidate": _cost(cand_sidecar),
    }
    prompt = cand_sidecar.get("prompt") or ref_sidecar.get("prompt")
    if judge is not None and isinstance(prompt, str):
        graded = judge(ref, prompt), judge(cand, prompt)
        if None not in graded:
            row["prompt"] = prompt
            row["reference"]["judge"], row["candidate"]["judge"] = graded
    return row


def judge_shapes(frames, prompt: str) -> dict[str, Any] | None:
    """The shapes judge's colour, shape and direction of `frames` against a caption of the
    shapes world (None for any other prompt)."""
    from ..data.shapes import parse_caption
    from .shapes import measure

    try:
        expected = parse_caption(prompt)
    except InputError:
        return None
    seen = measure(frames)
    found = (seen.color, seen.shape, seen.direction)
    return {"color": seen.color, "shape": seen.shape, "direction": seen.direction, "correct": found == expected}


def wants_shapes_judge(pairs: list[VideoPair]) -> bool:
    """Whether the candidate videos come from the built-in shapes model (their sidecars say so)."""
    return bool(pairs) and all(_is_shapes(read_sidecar(p.candidate)) for p in pairs)


def mean_finite(values: list) -> float | None:
    """The mean of the finite numbers among `values` (None when there are none)."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _total(values: list) -> float | None:
    # a total only when every video says: a partial sum would compare unlike amounts
    return sum(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the metrics, total costs of both sides and the candidate's speed-up, judge
    accuracies (the fraction of videos whose colour, shape and direction all match); rows with
    an `error` are listed as unreadable and left out of the rest."""
    unreadable = [r["video"] for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    psnrs = [r["psnr"] for r in rows]
    summary: dict[str, Any] = {
        "videos": len(rows),
        "unreadable": unreadable,
        "identical": sum(r["identical"] for r in rows),
        "psnr": float("inf") if rows and all(r["identical"] for r in rows) else mean_finite(psnrs),
        "ssim": mean_finite([r["ssim"] for r in rows]),
        "lpips": mean_finite([r["lpips"] for r in rows]),
    }
    for side in ("reference", "candidate"):
        summary[side] = {key: _total([r[side][key] for r in rows]) for key in ("denoise_seconds", "transformer_evaluations")}
        judged = [r[side]["judge"] for r in rows if "judge" in r[side]]
        if judged:
            summary[side]["judge_accuracy"] = sum(j["correct"] for j in judged) / len(judged)
    ref_s, cand_s = summary["reference"]["denoise_seconds"], summary["candidate"]["denoise_seconds"]
    summary["denoise_speedup"] = ref_s / cand_s if ref_s and cand_s else None  # None when either side has no total
    return summary
