"""What a media file is, from its first bytes: the video and image containers osp reads.

A name says nothing about content (`evil.html` renamed `clip.mp4`), so whatever arrives from
outside (the page's uploads) is checked against the container signature its suffix promises.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

# container -> the suffixes that name it
CONTAINER_SUFFIXES: dict[str, tuple[str, ...]] = {
    "mp4": (".mp4", ".m4v", ".mov"),  # ISO base media / QuickTime
    "matroska": (".mkv", ".webm"),
    "avi": (".avi",),
    "gif": (".gif",),
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "bmp": (".bmp",),
    "webp": (".webp",),
    "tiff": (".tif", ".tiff"),
}
IMAGE_CONTAINERS = ("png", "jpeg", "bmp", "webp", "tiff")
VIDEO_SUFFIXES = frozenset(s for c, suffixes in CONTAINER_SUFFIXES.items() if c not in IMAGE_CONTAINERS for s in suffixes)
IMAGE_SUFFIXES = frozenset(s for c in IMAGE_CONTAINERS for s in CONTAINER_SUFFIXES[c])
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES
CONTAINER_NAMES = {
    "mp4": "an MP4/QuickTime video",
    "matroska": "a Matroska/WebM video",
    "avi": "an AVI video",
    "gif": "a GIF",
    "png": "a PNG image",
    "jpeg": "a JPEG image",
    "bmp": "a BMP image",
    "webp": "a WebP image",
    "tiff": "a TIFF image",
}
# the first box of an ISO/QuickTime file ("ftyp" in every mp4; old QuickTime files may open with these)
ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
HEAD_BYTES = 16


def container_of(head: bytes) -> str | None:
    """The container whose signature `head` (a file's first bytes) starts with, or None."""
    if len(head) >= 8 and head[4:8] in ISO_FIRST_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska and WebM
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def check_media_file(path: Path, shown_name: str | None = None) -> str:
    """The container of `path`, a video or image whose content matches its suffix; else
    `InputError` naming the file as `shown_name` (the user's name for it, not a server path)."""
    name = shown_name or path.name
    suffix = path.suffix.lower()
    expected = next((c for c, suffixes in CONTAINER_SUFFIXES.items() if suffix in suffixes), None)
    choices = "upload a video or image: " + ", ".join(sorted(MEDIA_SUFFIXES))
    if expected is None:
        raise InputError(f"'{name}' is not a video or image", choices)
    with open(path, "rb") as f:
        found = container_of(f.read(HEAD_BYTES))
    if found != expected:
        what = CONTAINER_NAMES[found] if found else "not a video or image"
        raise InputError(f"'{name}' is named {suffix} but its content is {what}", choices)
    return found


def frames_suffix(num_frames: int) -> str:
    """The file type osp writes `num_frames` frames as: one frame is an image (.png), more an
    H.264 .mp4."""
    return ".png" if num_frames == 1 else ".mp4"


def parse_size(size: str | None) -> tuple[int, int] | None:
    """'HxW' (or 'N' for square) -> (H, W)."""
    if size is None:
        return None
    try:
        parts = [int(p) for p in size.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise InputError(f"cannot read size '{size}'", "write it as HxW, e.g. 256x256")
    return parts[0], parts[1]
