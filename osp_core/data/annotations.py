"""The Open-Sora-Plan annotation format, read unchanged.

A *data list* is a text file with one `ROOT,ANNOTATION.json` per line. An *annotation* is a
JSON list (or JSONL, one object per line) of `{"path": relative path, "cap": caption or list
of captions, "frame_idx": "start:end" (optional)}`, and optionally the Open-Sora-Plan
fine-tuning keys `num_frames` (frames in the file), `resolution` (`{"height", "width"}`) and
`fps`, which spare the trainer a look into the file; other keys are ignored, so the released
v1.1.0 caption files work as they are. Images use the same format. A *captioned folder* holds
videos with a `NAME.txt` caption file beside each `NAME.mp4`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES


@dataclass(frozen=True)
class Entry:
    """One sample: an absolute media path, its captions and an optional frame range [start, end)."""

    path: Path
    captions: tuple[str, ...]
    start: int = 0
    end: int | None = None
    objects: tuple | None = field(default=None, compare=False, hash=False)
    """Annotated objects (`osp data synth --objects 2`: per-frame boxes and centres), if any."""
    num_frames: int | None = None
    """Frames in the file (the annotation's `num_frames`), when the annotation says."""
    size: tuple[int, int] | None = None
    """(height, width) of the frames (the annotation's `resolution`), when it says."""
    fps: float | None = None
    """Frame rate of the file (the annotation's `fps`), when it says."""

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES


def _parse_frame_idx(value: object, where: str) -> tuple[int, int | None]:
    text = str(value).strip()
    start_text, sep, end_text = text.partition(":")
    try:
        start = int(start_text) if start_text.strip() else 0
        end = int(end_text) if sep and end_text.strip() else None
    except ValueError:
        raise InputError(f"bad frame_idx {value!r} in {where}", "write it as \"start:end\" (frame numbers)") from None
    if start < 0 or (end is not None and end <= start):
        raise InputError(f"bad frame_idx {value!r} in {where}", "need 0 <= start < end")
    return start, end


def _positive(record: dict, key: str, where: str, kind: type = int) -> float | int | None:
    """`record[key]` as a positive int (or float), None when absent; anything else is refused."""
    value = record.get(key)
    if value is None:
        return None
    # a JSON number only: "17" or true is a mistake in the annotation, not a frame count
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number <= 0 or (kind is int and number != int(number)):
        raise InputError(f"bad {key} {value!r} in {where}", f"{key} must be a positive {'whole ' if kind is int else ''}number (or leave it out)")
    return kind(number)


def _media_fields(record: dict, where: str) -> dict:
    """The fine-tuning keys of a record: num_frames, resolution {height, width} (used only when
    it has both) and fps."""
    resolution = record.get("resolution")
    size = None
    if isinstance(resolution, dict) and resolution.get("height") is not None and resolution.get("width") is not None:
        size = (_positive(resolution, "height", where), _positive(resolution, "width", where))
    elif resolution is not None and not isinstance(resolution, dict):
        raise InputError(f"bad resolution {resolution!r} in {where}", 'write it as {"height": H, "width": W}')
    return {"num_frames": _positive(record, "num_frames", where), "size": size, "fps": _positive(record, "fps", where, float)}


def _captions(value: object) -> tuple[str, ...]:
    if value is None:
        return ("",)
    if isinstance(value, (list, tuple)):
        caps = tuple(str(v) for v in value if v is not None)
        return caps or ("",)
    return (str(value),)


def _entries_from_records(records: list, root: Path, where: str) -> list[Entry]:
    out: list[Entry] = []
    for number, record in enumerate(records):
        if not isinstance(record, dict) or "path" not in record:
            raise InputError(f"entry {number} of {where} has no \"path\"", "each entry needs {\"path\": ..., \"cap\": ...}")
        start, end = (0, None)
        if record.get("frame_idx") not in (None, ""):
            start, end = _parse_frame_idx(record["frame_idx"], f"entry {number} of {where}")
        path = Path(str(record["path"]))
        objects = tuple(record["objects"]) if isinstance(record.get("objects"), list) else None
        media = _media_fields(record, f"entry {number} of {where}")
        out.append(Entry(path if path.is_absolute() else root / path, _captions(record.get("cap")), start, end, objects, **media))
    return out


_MISSING_FIX = {"annotation file": "check the data list / --data path", "data list": "pass a file with lines ROOT,ANNOTATION.json"}


def _require_file(path: Path, kind: str) -> None:
    if not path.is_file():
        raise InputError(f"{kind} '{path}' does not exist", _MISSING_FIX[kind])


def read_annotation(path: str | Path, root: str | Path | None = None) -> list[Entry]:
    """Entries of one annotation file (.json list or .jsonl); relative paths resolve against `root`
    (default: the annotation's folder)."""
    path = Path(path)
    _require_file(path, "annotation file")
    base = Path(root) if root is not None else path.parent
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise InputError(f"line {line_no} of '{path}' is not JSON", "one JSON object per line in .jsonl") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"'{path}' is not valid JSON (line {exc.lineno})", "an annotation is a JSON list of {\"path\", \"cap\"} objects") from None
        if not isinstance(records, list):
            raise InputError(f"'{path}' does not hold a JSON list", "an annotation is a JSON list of {\"path\", \"cap\"} objects")
    return _entries_from_records(records, base, f"'{path}'")


def _resolve(text: str, base: Path) -> Path:
    path = Path(text.strip()).expanduser()
    if path.is_absolute():
        return path
    beside = base / path
    return beside if beside.exists() else path


def read_data_list(path: str | Path) -> list[Entry]:
    """Entries of a data list file (`ROOT,ANNOTATION` per line); relative paths in the list are
    looked up beside the list file first, then in the working directory."""
    path = Path(path)
    _require_file(path, "data list")
    entries: list[Entry] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        root_text, sep, anno_text = line.partition(",")
        if not sep or not anno_text.strip():
            raise InputError(f"line {line_no} of '{path}' is not ROOT,ANNOTATION", "each line is a media folder, a comma, and an annotation file")
        entries.extend(read_annotation(_resolve(anno_text, path.parent), _resolve(root_text, path.parent)))
    return entries


def scan_folder(folder: str | Path, images: bool = False) -> list[Entry]:
    """Every video (or image) under `folder`, without captions, in a stable order."""
    folder = Path(folder)
    suffixes = IMAGE_SUFFIXES if images else VIDEO_SUFFIXES
    return [Entry(p, ("",)) for p in sorted(folder.rglob("*")) if p.suffix.lower() in suffixes and p.is_file()]


def read_captioned_folder(folder: str | Path) -> list[Entry]:
    """Every video under `folder` with its caption: the `NAME.txt` beside `NAME.mp4` (each
    non-empty line one caption, drawn at random per sample; an empty file is the empty
    caption). A video without its .txt is refused, naming it."""
    folder = Path(folder)
    videos = [entry.path for entry in scan_folder(folder)]
    missing = [v for v in videos if not v.with_suffix(".txt").is_file()]
    if missing:
        others = f" (and {len(missing) - 1} other video(s))" if len(missing) > 1 else ""
        raise InputError(
            f"'{missing[0]}' has no caption file '{missing[0].with_suffix('.txt').name}' beside it{others}",
            "write each video's caption to NAME.txt next to NAME.mp4, or pass a data list / annotation",
        )
    out = []
    for video in videos:
        lines = [line.strip() for line in video.with_suffix(".txt").read_text(encoding="utf-8").splitlines()]
        out.append(Entry(video, tuple(line for line in lines if line) or ("",)))
    return out


FOLDER_KINDS = ("", "videos", "captioned")
"""What a folder given as data means: '' refused, 'videos' every video (no captions: the VAE),
'captioned' every video with its NAME.txt caption (the transformer trainers)."""


def _accepted(folder: str) -> str:
    """The fix text naming every form of data a reader with this `folder` kind takes."""
    forms = {"": "", "videos": ", or a folder of videos", "captioned": ", or a folder of videos with a NAME.txt caption beside each"}[folder]
    return f"pass a data list (ROOT,ANNOTATION.json lines), an annotation .json/.jsonl{forms}"


def check_data_source(source: str | Path, folder: str = "") -> Path:
    """The path of a data list, an annotation or (when `folder` names a kind, `FOLDER_KINDS`)
    a folder; refuses one that is not there before anything is read."""
    source = Path(source).expanduser()
    if not source.exists():
        raise InputError(f"data '{source}' does not exist", _accepted(folder))
    if source.is_dir():
        if not folder:
            raise InputError(f"'{source}' is a folder", _accepted(folder))
    elif source.suffix.lower() in (".json", ".jsonl"):
        _require_file(source, "annotation file")
    else:
        _require_file(source, "data list")
    return source


def load_entries(source: str | Path, folder: str = "") -> list[Entry]:
    """Entries from a data list, an annotation (.json/.jsonl) or, when `folder` names a kind
    (`FOLDER_KINDS`), a folder."""
    source = check_data_source(source, folder)
    if source.is_dir():
        entries = read_captioned_folder(source) if folder == "captioned" else scan_folder(source)
    elif source.suffix.lower() in (".json", ".jsonl"):
        entries = read_annotation(source)
    else:
        entries = read_data_list(source)
    if not entries:
        raise InputError(f"no samples found in '{source}'", "check the annotation files and the media folder")
    return entries
