"""What `osp serve` needs besides its faces: its options, per-session output folders and
cancel flags for the page, and the checks of uploads. The jobs themselves run in worker
processes (`worker.py`) that take them from the queue (`queue.py`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, OSPError
from ..hub import DEFAULT_REPO
from ..io.media import check_media_file

API_KEY_ENV = "OSP_API_KEY"


@dataclass
class ServeOptions:
    """`osp serve`'s settings (see its --help)."""

    model: str = DEFAULT_REPO
    host: str = "127.0.0.1"
    port: int = 7860
    device: str | None = None
    dtype: str | None = None
    output_dir: Path = Path("samples/serve")
    max_queue: int = 16
    max_upload_mb: int = 200
    page: bool = True
    api: bool = True
    workers: int = 1
    api_key: str | None = None
    lease_seconds: float = 30.0
    lora_dir: Path | None = None  # LoRA adapters API clients may name: its subfolders

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InputError(f"--port must be in 1..65535, got {self.port}", "pass e.g. --port 7860")
        if self.max_queue < 1:
            raise InputError(f"--max-queue must be >= 1, got {self.max_queue}", "pass e.g. --max-queue 16")
        if self.max_upload_mb < 1:
            raise InputError(f"--max-upload-mb must be >= 1, got {self.max_upload_mb}", "pass e.g. --max-upload-mb 200")
        if self.lora_dir is not None and not Path(self.lora_dir).is_dir():
            raise InputError(f"--lora-dir '{self.lora_dir}' is not a folder", "pass a folder whose subfolders are LoRA adapters (e.g. training runs' lora/ folders copied there)")
        if not self.page and not self.api:
            raise InputError("--no-page and --no-api leave nothing to serve", "drop one of them")
        if not 1 <= self.workers <= 64:
            raise InputError(f"--workers must be in 1..64, got {self.workers}", "pass one per device, e.g. --workers 1")
        if not 1 <= self.lease_seconds <= 3600:
            raise InputError(f"--lease-seconds must be in 1..3600, got {self.lease_seconds:g}", "pass e.g. --lease-seconds 30")
        if self.api_key is not None and self.api_key != self.api_key.strip() or any(c.isspace() for c in self.api_key or ""):
            raise InputError("--api-key holds spaces or other white space, which HTTP headers cannot carry intact", "use a key without white space, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
        if self.api_key is not None and len(self.api_key) < 8:
            raise InputError("--api-key is shorter than 8 characters", "use a long random key, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`")
        if self.api_key is None and not is_loopback(self.host):
            raise InputError(f"--host {self.host} opens the server to the network without a key", f"pass --api-key KEY (or set {API_KEY_ENV}); clients then send it as a Bearer token and the page asks for it")


def is_loopback(host: str) -> bool:
    """Whether `host` reaches this machine only (127.0.0.0/8, ::1, or a name resolving there)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return True  # an unknown name: the listen check refuses it with its own line
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_api_packages() -> None:
    """`InputError` naming the extra when the video API's server packages are missing."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"the video API needs {', '.join(missing)}, which is not installed", "pip install 'osp[serve]', or pass --no-api")


def check_gradio() -> None:
    """`InputError` naming the extra when Gradio is not installed."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise InputError("osp serve needs Gradio, which is not installed", "pip install 'osp[serve]'") from None


def use_gradio_folder(output_dir: Path) -> Path:
    """Point Gradio's temp, upload and cache folders at `output_dir/.gradio`, so the page writes
    and serves files from nowhere else. Gradio reads GRADIO_TEMP_DIR when it is imported (its
    uploads, screen recordings, history), so this runs before the first `import gradio`."""
    folder = output_dir.absolute() / ".gradio"
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(folder / "examples")
    return folder


def sweep_upload_temps(gradio_dir: Path) -> int:
    """Delete Gradio's upload temp files (`tmp*` at the top of its folder) that a server killed
    mid-upload, or an older osp, left behind. Run before the server starts: no upload is in
    flight then. Returns how many were removed."""
    removed = 0
    for path in gradio_dir.glob("tmp*") if gradio_dir.is_dir() else ():
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def job_folder(output_dir: Path, session_key: str, kind: str) -> Path:
    """A new folder for one job of one browser session, inside `output_dir`. `session_key` is
    the server's hash of the session id (`Sessions.key`), so no name a client sends reaches the
    file system."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return output_dir / session_key / f"{kind}-{stamp}-{secrets.token_hex(3)}"


def check_upload(path: str | Path | None, max_bytes: int) -> Path:
    """An uploaded file the VAE can read: a video or image by its content, at most `max_bytes`."""
    if path is None:
        raise InputError("no file uploaded", "upload a video (mp4, webm, mov, mkv, avi, gif) or an image")
    path = Path(path)
    check_media_file(path)
    if path.stat().st_size > max_bytes:
        raise InputError(f"'{path.name}' is larger than {max_bytes // 2**20} MB", "upload a shorter or smaller video")
    return path


MAX_ADAPTERS = 8
"""Most LoRA adapters one job may take (the API's `lora`, the page's picker)."""
MAX_OFFERED = 64
"""Most adapters of --lora-dir the server offers (the first by name): the page lists them, the
API takes only them."""
MAX_SCALE = 2.0
"""The largest |scale| an adapter is applied with (the page's sliders span -2..2)."""
NAMES_SHOWN = 20
"""Adapter names an unknown-name refusal lists."""


class AdapterRefused(InputError):
    """A choice of adapters the server does not take; `code` is the API's error code for it."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def offered_adapters(lora_dir: Path | None) -> list[str]:
    """The adapters `--lora-dir` offers, by name: its subfolders holding an adapter_config.json
    (or a text encoder part's, in text_encoder/), sorted, the first `MAX_OFFERED` (none without
    a --lora-dir)."""
    from ..pipelines.lora_inputs import ADAPTER_CONFIG, TEXT_FOLDER

    if lora_dir is None:
        return []
    return sorted(p.name for p in Path(lora_dir).iterdir() if (p / ADAPTER_CONFIG).is_file() or (p / TEXT_FOLDER / ADAPTER_CONFIG).is_file())[:MAX_OFFERED]


def resolve_adapters(chosen: list[tuple[str, float]], lora_dir: Path | None) -> list[str]:
    """A job's `lora` entries ("PATH:SCALE") for the (name, scale) pairs a client chose among
    `offered_adapters` (a name is never a path: nothing else on the server's disk can be
    named), each adapter's files checked. `AdapterRefused` (one line, no server path) for a
    server without adapters, too many, a name it does not offer, a scale that is not finite or
    beyond +-`MAX_SCALE`, or an adapter that does not read."""
    from ..pipelines.lora_inputs import AdapterSpec, check_adapters
    from .paths import without_server_paths

    if lora_dir is None:
        raise AdapterRefused("this server offers no LoRA adapters (its operator starts it with --lora-dir DIR)", "unsupported_parameter")
    if len(chosen) > MAX_ADAPTERS:
        raise AdapterRefused(f"{len(chosen)} LoRA adapters chosen, more than the {MAX_ADAPTERS} this server takes")
    offered = offered_adapters(lora_dir)
    specs = []
    for name, scale in chosen:
        if name not in offered:
            shown = ", ".join(offered[:NAMES_SHOWN]) or "none"
            more = f" and {len(offered) - NAMES_SHOWN} more" if len(offered) > NAMES_SHOWN else ""
            raise AdapterRefused(f"no LoRA adapter '{name[:60]}' on this server: it offers {shown}{more}", "adapter_not_found")
        if not math.isfinite(scale):
            raise AdapterRefused(f"the scale of LoRA adapter '{name}' is not a finite number")
        if abs(scale) > MAX_SCALE:
            raise AdapterRefused(f"the scale of LoRA adapter '{name}' is {scale:g}, outside the -{MAX_SCALE:g}..{MAX_SCALE:g} this server takes")
        specs.append(AdapterSpec(Path(lora_dir) / name, scale))
    try:
        check_adapters(specs)  # a corrupt or unreadable adapter: refused now, not failed later
    except OSPError as exc:
        raise AdapterRefused(f"lora: {without_server_paths(str(exc), lora_dir)}") from None
    return [f"{spec.path}:{spec.scale!r}" for spec in specs]


def parse_tracks(text: str | None) -> list[str]:
    """The page's track box: one X0,Y0:X1,Y1 per line (blank lines ignored)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


@dataclass
class Sessions:
    """Per-browser-session state the server keeps: cancel flags, and the folder key.

    The key is a keyed hash of the session id, so a session's folder cannot be derived from a
    name a client chooses (`../x` becomes hex) and one session cannot name another's folder."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    flags: dict[str, threading.Event] = field(default_factory=dict)

    def key(self, session_id: str) -> str:
        return hashlib.sha256(self.secret + session_id.encode()).hexdigest()[:20]

    def cancel_flag(self, session_id: str) -> threading.Event:
        return self.flags.setdefault(self.key(session_id), threading.Event())
