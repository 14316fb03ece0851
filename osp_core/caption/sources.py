"""Which files to caption: folders (walked recursively), media files, and list files.

A list file is `.txt` (one path per line, `#` starts a comment), `.json` (a list of paths or
of objects) or `.jsonl` (one object per line); objects have `path` and optionally `cap` (a
rough caption) and `ocr` (text recognised in the image), which the image prompt templates use.
Relative paths in a list file are relative to the list file's folder. Entries that do not exist
are kept: they are reported as failed, not fatal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..io.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES

LIST_SUFFIXES = {".txt", ".list", ".lst", ".json", ".jsonl"}


@dataclass(frozen=True)
class MediaItem:
    """One file to caption, with optional text the prompt templates can use."""

    path: Path
    rough_caption: str | None = None
    ocr_text: str | None = None

    @property
    def prompt_values(self) -> tuple[tuple[str, str], ...]:
        values = (("caption", self.rough_caption), ("ocr", self.ocr_text))
        return tuple((k, v) for k, v in values if v)


def _suffixes(images: bool) -> set[str]:
    return IMAGE_SUFFIXES if images else VIDEO_SUFFIXES


def _walk(folder: Path, images: bool) -> list[Path]:
    wanted = _suffixes(images)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if Path(f).suffix.lower() in wanted and not f.startswith(".")]
    return found


def _read_list(path: Path) -> list[MediaItem]:
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read list file '{path}': {exc.__class__.__name__}", "pass a UTF-8 text, .json or .jsonl list") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            entries = json.loads(text)
            if not isinstance(entries, list):
                raise InputError(f"list file '{path}' is not a JSON list", "write a list of paths or of {\"path\": ...} objects")
        elif suffix == ".jsonl":
            entries = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        entries.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        # Each line is parsed on its own, so the decoder's own line is always 1.
                        raise InputError(f"list file '{path}' is not valid JSON (line {number})", "fix the file or use a .txt list") from None
        else:
            entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    except json.JSONDecodeError as exc:
        raise InputError(f"list file '{path}' is not valid JSON (line {exc.lineno})", "fix the file or use a .txt list") from None
    items = []
    for n, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise InputError(f"entry {n} of list file '{path}' has no 'path'", "give each entry a \"path\" string")
        cap = entry.get("cap")
        if isinstance(cap, list):  # Open-Sora-Plan annotations may hold several captions
            cap = cap[0] if cap else None
        items.append(MediaItem((base / entry["path"]).expanduser().resolve(), cap or None, entry.get("ocr") or None))
    return items


def collect(inputs: list[Path], images: bool = False) -> list[MediaItem]:
    """The media files named by `inputs`, sorted and without duplicates.

    Raises `InputError` for an input that does not exist, a file of the wrong kind, or when
    nothing is found.
    """
    if not inputs:
        raise InputError("no input given", "pass folders, video files or list files")
    kind = "image" if images else "video"
    items: dict[Path, MediaItem] = {}
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            for f in _walk(path, images):
                items.setdefault(f.resolve(), MediaItem(f.resolve()))
            continue
        if not path.exists():
            raise InputError(f"input '{raw}' does not exist", "pass existing folders, files or list files")
        suffix = path.suffix.lower()
        if suffix in LIST_SUFFIXES:
            for item in _read_list(path):
                items[item.path] = item
        elif suffix in _suffixes(images):
            items.setdefault(path.resolve(), MediaItem(path.resolve()))
        elif suffix in _suffixes(not images):
            raise InputError(
                f"'{raw}' is {'a video' if images else 'an image'}, but this run captions {kind}s",
                "drop --images to caption videos" if images else "pass --images to caption images",
            )
        else:
            raise InputError(f"'{raw}' is not a {kind} or a list file", f"pass {kind} files, folders, or .txt/.json/.jsonl lists")
    if not items:
        hint = "pass --images to caption images" if not images else "drop --images to caption videos"
        raise InputError(f"no {kind}s found in {', '.join(map(str, inputs))}", hint)
    return [items[p] for p in sorted(items)]


def default_root(inputs: list[Path], items: list[MediaItem]) -> Path:
    """The folder annotation paths are relative to: the input folder when exactly one folder is
    given, else the deepest folder that holds every file."""
    folders = [Path(p).expanduser().resolve() for p in inputs if Path(p).expanduser().is_dir()]
    if len(inputs) == 1 and len(folders) == 1:
        return folders[0]
    return Path(os.path.commonpath([str(item.path.parent) for item in items]))


def relative_to_root(path: Path, root: Path) -> str:
    """`path` relative to `root`, with forward slashes (what the annotation stores)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise InputError(f"'{path}' is not inside the dataset root '{root}'", "pass a --root that contains every input") from None
