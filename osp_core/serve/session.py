"""What the web page runs, without the page: per-session output folders, one job at a time on
the device, cancellation, and the jobs (text to video through `run_sampling`, the VAE round
trip through `jobs.vae`, editing through `run_edit`). `app.py` is the Gradio face over these.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, OSPError
from ..hub import DEFAULT_REPO
from ..io.media import check_media_file
from ..jobs.sampling import PipelineCache, SamplingSummary, run_sampling
from ..jobs.sampling_plan import SamplingJob
from ..jobs.vae import VaeCache, VaeJob, VaeSummary, plan_vae, run_vae

Report = Callable[[float | None, str], None]  # (fraction done or None, what is happening)


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

    def validate(self) -> None:
        if not 1 <= self.port <= 65535:
            raise InputError(f"--port must be in 1..65535, got {self.port}", "pass e.g. --port 7860")
        if self.max_queue < 1:
            raise InputError(f"--max-queue must be >= 1, got {self.max_queue}", "pass e.g. --max-queue 16")
        if self.max_upload_mb < 1:
            raise InputError(f"--max-upload-mb must be >= 1, got {self.max_upload_mb}", "pass e.g. --max-upload-mb 200")


class Cancelled(OSPError):
    """The user cancelled the job in the page."""

    def __init__(self) -> None:
        super().__init__("cancelled", "press Generate to start again")


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


class StepReporter:
    """`SamplingProgress` for the page: every callback first checks the session's cancel flag
    (raising stops the run, as the protocol allows), then reports a fraction and a line."""

    def __init__(self, report: Report, cancelled: threading.Event) -> None:
        self.report = report
        self.cancelled = cancelled
        self.notes: list[str] = []
        self.prompt_count = 1

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def status(self, message: str) -> None:
        self.check()
        self.report(None, message)

    def video(self, index: int, total: int, prompt: str) -> None:
        self.check()
        self.prompt_count = total

    def step(self, done: int, total: int) -> None:
        self.check()
        self.report(done / total, f"denoising step {done}/{total}")

    def notice(self, kind: str, message: str) -> None:
        self.notes.append(f"{kind}: {message}")


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


class Device:
    """One job at a time on the device (the page's queue lets one through per device; this
    lock also holds when a cancelled job is still unwinding), and the models kept loaded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pipelines = PipelineCache()
        self.vaes = VaeCache()

    @contextmanager
    def turn(self, cancelled: threading.Event) -> Iterator[None]:
        """Hold the device; a job cancelled while it waited does not start."""
        with self.lock:
            if cancelled.is_set():
                raise Cancelled()
            yield


def run_text_to_video(device: Device, job: SamplingJob, reporter: StepReporter) -> SamplingSummary:
    """`run_sampling` with the device's kept models, one job at a time."""
    with device.turn(reporter.cancelled):
        return run_sampling(job, reporter, pipelines=device.pipelines)


def run_video_edit(device: Device, job: Any, reporter: StepReporter) -> Any:
    """`run_edit` (an `EditJob`), one job at a time; its inputs are checked before the turn."""
    from ..jobs.edit import plan_edit, run_edit

    plan = plan_edit(job)  # bad boxes, frames, tracks: refused without waiting for the device
    with device.turn(reporter.cancelled):
        return run_edit(plan, reporter)


def parse_tracks(text: str | None) -> list[str]:
    """The page's track box: one X0,Y0:X1,Y1 per line (blank lines ignored)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class VaeReporter:
    """`StepsProgress` for the page's VAE tab: reports each tile, and stops the job (raising
    `Cancelled`) once the session's cancel flag is set."""

    def __init__(self, report: Report, cancelled: threading.Event) -> None:
        self.report = report
        self.cancelled = cancelled

    def status(self, message: str) -> None:
        self.report(None, "loading the VAE ...")  # the server's folders stay out of the page

    def step(self, done: int, total: int) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        self.report(done / total, f"VAE tile {done}/{total}")


def run_vae_round_trip(device: Device, model: str, upload: Path, output: Path, device_name: str | None, dtype_name: str | None, size: str | None, report: Report, cancelled: threading.Event) -> VaeSummary:
    """Round trip `upload` through `model`'s VAE (longest 4k+1 frame prefix, optional resize)
    and write the result and a JSON sidecar (PSNR, SSIM) together into the folder `output`."""
    job = VaeJob("recon", upload, output_dir=output, model=model, frames="auto", size=size.strip() or None if size else None, device=device_name, dtype=dtype_name, memory_hint="pass a smaller size")
    plan = plan_vae(job)  # a clip too large is refused without waiting for the device
    with device.turn(cancelled):
        return run_vae(plan, VaeReporter(report, cancelled), device.vaes)
