"""Files that appear together or not at all: a video, its latents and its JSON sidecar.

Each file is written to a hidden temporary name beside its destination; `commit` syncs them to
disk and moves them into place with the *last* destination (the sidecar, which names the
others) moved last. Replacing an earlier result (`overwrite`) removes its sidecar first, so a
kill at any moment never leaves an old sidecar beside new files or a new sidecar beside old
ones. Without `overwrite` each destination is created exclusively (a hard link), so of two runs
writing the same name the second fails instead of replacing the first's file.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ..errors import InputError
from .atomic import ensure_writable_dir, fsync_path, release_folders, remove_stale_temps


class FileGroup:
    """Temporary names for `destinations` (in one folder), moved into place by `commit`;
    the temporaries are removed if the block fails."""

    def __init__(self, destinations: Sequence[Path], overwrite: bool = False, rename_hint: str = "choose another --seed or --output-dir") -> None:
        """`rename_hint`: how the caller's user picks other names, for when another run wrote
        one of `destinations` meanwhile."""
        self.destinations = [Path(d) for d in destinations]
        self.overwrite = overwrite
        self.rename_hint = rename_hint
        token = uuid.uuid4().hex[:12]
        # atomic_path's pattern: the stale sweep removes what a killed run leaves
        self.temporaries = {d: d.with_name(f".{d.stem}.{token}.tmp{d.suffix}") for d in self.destinations}
        for folder in {d.parent for d in self.destinations}:
            ensure_writable_dir(folder)
            remove_stale_temps(folder)

    def __enter__(self) -> FileGroup:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.discard()

    def path(self, destination: Path) -> Path:
        """Where to write `destination`'s content."""
        return self.temporaries[Path(destination)]

    def discard(self) -> None:
        for temporary in self.temporaries.values():
            temporary.unlink(missing_ok=True)

    def commit(self) -> None:
        """Move every written temporary into place, the last destination last."""
        missing = [str(d) for d, t in self.temporaries.items() if not t.exists()]
        if missing:
            raise RuntimeError(f"nothing was written for {', '.join(missing)}")
        for temporary in self.temporaries.values():
            fsync_path(temporary)
        if self.overwrite:
            for destination in reversed(self.destinations):  # the sidecar goes first
                destination.unlink(missing_ok=True)
        placed: list[Path] = []
        try:
            for destination in self.destinations:
                self._place(self.temporaries[destination], destination)
                placed.append(destination)
        except FileExistsError as exc:
            for destination in placed:  # ours, made a moment ago: take them back
                destination.unlink(missing_ok=True)
            raise InputError(f"'{exc.filename}' was written by another run meanwhile", f"pass --overwrite to replace it, or {self.rename_hint}") from None
        for folder in {d.parent for d in self.destinations}:
            fsync_path(folder)
            release_folders(folder)

    def _place(self, temporary: Path, destination: Path) -> None:
        if self.overwrite:
            os.replace(temporary, destination)
            return
        try:
            os.link(temporary, destination)  # fails if the destination exists
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "exists", str(destination)) from None
        except OSError:  # no hard links on this filesystem: reserve the name, then replace
            os.close(os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            os.replace(temporary, destination)
            return
        temporary.unlink()
