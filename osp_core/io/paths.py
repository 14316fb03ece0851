"""Checks of the files a command reads and writes, before any work is done."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .media import IMAGE_SUFFIXES, VIDEO_SUFFIXES


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """`path` as a Path when it is a readable file; a one-line `InputError` saying whether it is
    missing or a folder (naming a video inside it, when it holds one) otherwise."""
    path = Path(path)
    if path.is_dir():
        inside = next((p for p in sorted(path.rglob("*")) if p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES and p.is_file()), None) if what == "video" else None
        hint = f"pass one {what} file, e.g. '{inside}'" if inside else f"pass a {what} file, not a folder"
        raise InputError(f"{what} '{path}' is a folder, not a file", hint)
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist", "check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} '{path}' is not readable", "check its permissions")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse an output that is a folder, that is one of `inputs` (even with `overwrite`: a
    command never replaces what it reads), or that exists while `overwrite` is off."""
    output = Path(output)
    if output.is_dir():
        raise InputError(f"output '{output}' is a folder", "give a file name")
    for source in inputs:
        if _same_file(output, Path(source)) or output.absolute() == Path(source).absolute():
            raise InputError(f"output '{output}' is the input '{source}'", "write the result to another file; an input is never replaced")
    if output.exists() and not overwrite:
        raise InputError(f"'{output}' already exists", "pass --overwrite to replace it, or choose another -o")
    return output


def folders_to_create(directory: str | Path) -> list[Path]:
    """The folders `directory.mkdir(parents=True)` would create, deepest first (so a refused
    or failed run can remove exactly those, with `atomic.remove_empty_folders`)."""
    missing = []
    current = Path(directory).absolute()
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    return missing


def existing_ancestor(directory: str | Path) -> Path:
    """`directory` if it exists, else the nearest folder above it that does."""
    missing = folders_to_create(directory)
    return missing[-1].parent if missing else Path(directory).absolute()
