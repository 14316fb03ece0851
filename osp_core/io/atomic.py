"""Write-then-rename: a crash or Ctrl-C never leaves a half-written output.

Every output goes to a hidden temporary name beside it (`.NAME.<12 hex>.tmp[.SUFFIX]`), is
flushed to disk (file, then folder) and renamed. A kill at the exact rename point can still
leave such a temporary behind; the next write into that folder removes temporaries of this
pattern that are older than `STALE_AFTER_SECONDS` and that no process holds locked (a writer
holds an exclusive `flock` on its temporary for as long as it writes).

A folder created for an output holds a locked marker (`.osp-folder.<12 hex>.tmp`) until the
first file lands in it; a run killed before that (kill -9, an OOM kill) leaves the folder with
an unlocked marker, and the next sweep of its parent removes it as it removes temporaries.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .paths import existing_ancestor, folders_to_create

if TYPE_CHECKING:
    import torch

try:  # advisory locks mark temporaries that are still being written (absent on Windows)
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale files are judged by age alone
    fcntl = None  # type: ignore[assignment]

STALE_AFTER_SECONDS = 300.0
"""A temporary untouched this long, and not locked, is a leftover of a killed run."""

# `.NAME.<id>.tmp` (folders), `.NAME.<id>.tmp.SUFFIX` (files), `.NAME.old` (the previous
# folder during an atomic_dir swap) and the write probes `.osp-caption-XXXXXXXX.tmp`, `.osp-probe-XXXXXXXX.tmp`
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp(\.[^./]+)?$")
_OLD_NAME = re.compile(r"^\.(?P<name>.+)\.old$")
_PROBE_NAME = re.compile(r"^\.osp-(caption|probe)-[A-Za-z0-9_]{8}\.tmp$")

_swept: set[Path] = set()  # folders already cleaned by this process
_FOLDER_MARKER = "osp-folder"
_markers: dict[Path, tuple[Path, int]] = {}  # folder created by this process -> (marker, locked fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(directory: Path) -> None:
    """Create `directory` if needed; a one-line error when it cannot be written. Each folder
    created gets a locked marker until `release_folders` (a file landed in it)."""
    missing = folders_to_create(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder '{directory}': {exc.strerror}", "choose a writable location") from None
    for folder in reversed(missing):
        _mark_created(folder)
    _check_writable(directory, directory)


def _check_writable(directory: Path, asked: Path) -> None:
    """A one-line error when no file can be written in the existing folder `directory`; `asked`
    is the output folder the user named (itself, or a folder to create inside it)."""
    refused, reason = _unwritable(directory)
    if refused and asked == directory:
        raise InputError(f"output folder '{directory}' is not writable" + (f" ({reason})" if reason else ""), "choose a writable location")
    if refused:
        raise InputError(f"cannot create output folder '{asked}': '{directory}' is not writable" + (f": {reason}" if reason else ""), "choose a writable location")


def _unwritable(directory: Path) -> tuple[bool, str]:
    """Whether no file can be written in the existing folder `directory`, and the system's reason."""
    if not os.access(directory, os.W_OK):
        return True, ""
    # os.access trusts root even on read-only pseudo file systems (/proc, /sys): really try,
    # so the failure comes now and not after minutes of work
    try:
        fd, probe = tempfile.mkstemp(prefix=".osp-probe-", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return True, exc.strerror or type(exc).__name__
    return False, ""


def check_creatable_dir(directory: Path) -> None:
    """A one-line error unless `directory` exists and is writable, or can be created: checked in
    its nearest existing folder, so nothing is created before there is something to write."""
    current = existing_ancestor(directory)
    if not current.is_dir():
        raise InputError(f"cannot create output folder '{directory}': '{current}' is not a folder", "choose a writable location")
    _check_writable(current, directory)


def _release_all() -> None:
    """At exit every marker goes: a process that ends normally proved nothing about its folders."""
    for folder in list(_markers):
        release_folders(folder, above=False)


atexit.register(_release_all)


def _mark_created(folder: Path) -> None:
    """Put a locked marker in `folder`, which this process just created (see the module doc)."""
    marker = folder / f".{_FOLDER_MARKER}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return  # unmarked: a kill leaves it for the user, as before
    _lock(fd)
    _markers[folder] = (marker, fd)


def release_folders(directory: str | Path, above: bool = True) -> None:
    """A file landed in `directory`: drop the markers of it and (`above`) the folders above it
    that this process created (they are no longer empty)."""
    current = Path(directory).absolute()
    while current != current.parent:
        entry = _markers.pop(current, None)
        if entry is not None:
            marker, fd = entry
            Path(marker).unlink(missing_ok=True)
            os.close(fd)
        if not above:
            return
        current = current.parent


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty: the ones a failed run created."""
    for folder in folders:
        release_folders(folder, above=False)  # our marker (if any) goes, so an empty folder can
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone: leave it and its parents
            return


def _is_dead_run_folder(path: Path, now: float, older_than: float) -> bool:
    """`path` holds an unlocked, stale folder marker and nothing else but stale, unlocked
    temporaries and folders of the same kind: what a run killed before its first file left."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return False
    marked = False
    for entry in entries:
        child = Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and not is_temp_name(entry.name):
            if not _is_dead_run_folder(child, now, older_than):
                return False
            continue
        if not is_temp_name(entry.name) or entry.is_symlink():
            return False
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than or _in_use(child):
                return False
        except OSError:
            return False
        marked = marked or entry.name.startswith(f".{_FOLDER_MARKER}.")
    return marked


def temp_name(dest: Path) -> Path:
    """The temporary path beside `dest` that atomic writes use (matched by the stale sweep)."""
    return dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:12]}.tmp{dest.suffix}")


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of osp's temporary names (what `remove_stale_temps` may remove)."""
    return bool(_TEMP_NAME.match(name) or _OLD_NAME.match(name) or _PROBE_NAME.match(name))


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: age still protects
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _in_use(path: Path) -> bool:
    """True when another open file description holds `path` locked (it is being written)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # vanished or unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def remove_stale_temps(directory: str | Path, older_than: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove osp's temporaries in `directory` left by killed runs: names of osp's own pattern,
    not modified for `older_than` seconds and not locked by a writer. An `.NAME.old` folder is
    kept while NAME is missing (it is then the only copy). Returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not is_temp_name(entry.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False) and path not in _markers and _is_dead_run_folder(path, now, older_than):
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(path)
            continue
        old = _OLD_NAME.match(entry.name)
        if old and not (directory / old.group("name")).exists():
            continue
        path = Path(entry.path)
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < older_than or entry.is_symlink():
                continue
        except OSError:
            continue
        if _in_use(path):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path)
    return removed


def _sweep_once(directory: Path) -> None:
    key = directory.absolute()
    if key not in _swept:
        _swept.add(key)
        remove_stale_temps(directory)


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder: the rename is then all we have
        pass
    finally:
        os.close(fd)


def plain_modes(root: str | Path) -> None:
    """Give `root` and everything under it the mode a plain `open()` / `mkdir()` would (0666 or
    0777, less the umask): writers such as `mkstemp` and safetensors' `save_file` create files
    0600, which another user of a shared folder (a served --lora-dir) could not read."""
    mask = _umask()
    for folder, folders, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode & 0o777
            os.chmod(path, (0o777 if mode & 0o111 else 0o666) & ~mask)
        for name in folders:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o777 & ~mask)
    os.chmod(root, (0o777 if os.path.isdir(root) else 0o666) & ~mask)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under `root` (deepest first), then `root` itself."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it to `dest` only if the block succeeds.
    The file is fsync'd before, and its folder after, the rename."""
    dest = Path(dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    ensure_writable_dir(parent)
    _sweep_once(parent)
    # Name first, create inside the try: a Ctrl-C at any point leaves no temporary file.
    tmp_path = temp_name(dest)
    fd = -1
    try:
        fd = os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        _lock(fd)  # held until the rename: the stale sweep of another run leaves it alone
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # created 0600; outputs follow the umask
        fsync_path(tmp_path)
        os.replace(tmp_path, dest)
        fsync_path(parent)
        release_folders(parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `dest`; it replaces `dest` only if the block succeeds.
    Everything in it is fsync'd before the rename, the parent folder after."""
    dest = Path(dest)
    ensure_writable_dir(dest.parent)
    _sweep_once(dest.parent)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = -1
    try:
        tmp.mkdir(mode=0o700)
        fd = os.open(tmp, os.O_RDONLY)
        _lock(fd)
        yield tmp
        plain_modes(tmp)
        fsync_tree(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        fsync_path(dest.parent)
        release_folders(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def write_bytes_atomic(dest: str | Path, data: bytes) -> Path:
    """Write `data` to `dest` atomically (temporary file, fsync, rename)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return dest


def save_safetensors(dest: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors as a safetensors file atomically. safetensors' own `save_file` writes
    through a `.tmpXXXXXX` file of its own that a kill would leave behind; serializing to bytes
    and writing those through `atomic_path` leaves nothing but osp's (swept) temporary."""
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=dict(metadata) if metadata else None)
    return write_bytes_atomic(dest, data)
