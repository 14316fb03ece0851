"""The Open-Sora-Plan annotation format, read unchanged.

A *data list* is a text file with one `ROOT,ANNOTATION.json` per line. An *annotation* is a
JSON list (or JSONL, one object per line) of `{"path": relative path, "cap": caption or list
of captions, "frame_idx": "start:end" (optional)}`; other keys (resolution, fps, ...) are
ignored, so the released v1.1.0 caption files work as they are. Images use the same format.
"""

from __future__ import annotations

import json
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
        out.append(Entry(path if path.is_absolute() else root / path, _captions(record.get("cap")), start, end, objects))
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


def check_data_source(source: str | Path, allow_folder: bool = False) -> Path:
    """The path of a data list, an annotation or (when allowed) a folder; refuses one that is
    not there before anything is read."""
    source = Path(source).expanduser()
    if source.is_dir():
        if not allow_folder:
            raise InputError(f"'{source}' is a folder", "pass a data list (ROOT,ANNOTATION.json lines) or an annotation .json/.jsonl")
    elif source.suffix.lower() in (".json", ".jsonl"):
        _require_file(source, "annotation file")
    else:
        _require_file(source, "data list")
    return source


def load_entries(source: str | Path, allow_folder: bool = False) -> list[Entry]:
    """Entries from a data list, an annotation (.json/.jsonl) or, when allowed, a folder."""
    source = check_data_source(source, allow_folder)
    if source.is_dir():
        entries = scan_folder(source)
    elif source.suffix.lower() in (".json", ".jsonl"):
        entries = read_annotation(source)
    else:
        entries = read_data_list(source)
    if not entries:
        raise InputError(f"no samples found in '{source}'", "check the annotation files and the media folder")
    return entries
