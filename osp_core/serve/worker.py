"""The workers of `osp serve`: processes that take jobs from the queue and run them through
`osp_core.jobs`, one at a time each (one worker per device).

A job's settings say what to run (`kind`: t2v, edit or vae, and the job's fields) and where its
files go (`folder`). A worker writes into a per-attempt folder beside it and renames that into
place only once the queue has accepted the result, so a job killed or taken over half-way
leaves nothing behind. A thread renews the worker's lease while the job runs; the job's own
progress reports carry its progress to the queue and bring back a cancel.

`python -m osp_core.serve.worker CONFIG_JSON` runs one worker (`WorkerPool` starts them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, OSPError
from .queue import Claim, SqliteJobQueue

log = logging.getLogger("osp.serve")

HEARTBEAT_EVERY = 0.25  # seconds between progress reports to the queue (and cancel checks)
IDLE_POLL = 0.2  # seconds between claims while no job waits


class Cancelled(OSPError):
    """The job was cancelled (the page's Cancel, or the API's DELETE)."""

    def __init__(self) -> None:
        super().__init__("cancelled", "press Generate to start again")


class Stopping(Exception):
    """The worker is shutting down: the job goes back to the queue."""


class LeaseLost(Exception):
    """Another worker holds the job now: drop this attempt."""


@dataclass
class WorkerConfig:
    """What a worker process needs: the queue, and the device its jobs run on."""

    database: str
    device: str | None = None
    dtype: str | None = None
    lease_seconds: float = 30.0
    name: str = ""


def worker_name() -> str:
    """host:pid:random, so a server can tell its own dead workers (`is_alive`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def local_pid(worker: str) -> int | None:
    """The process id in a `worker_name`, when that worker ran on this host."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def is_alive(worker: str) -> bool | None:
    """Whether the worker named `worker` runs: None when it ran on another host."""
    pid = local_pid(worker)
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- what the faces submit ----------------------------------------------------------------------


def job_settings(job: Any, folder: Path, **extra: Any) -> dict[str, Any]:
    """A job dataclass (SamplingJob, EditJob, VaeJob) as the JSON the queue stores, with the
    folder its files go to; `extra` rides along (e.g. previews=True)."""
    fields = {f.name: (str(v) if isinstance(v, Path) else v) for f in dataclasses.fields(job) if (v := getattr(job, f.name)) is not None}
    return {"job": fields, "folder": str(folder), **extra}


def job_from_settings(cls: type, fields: dict[str, Any], **overrides: Any) -> Any:
    """The dataclass `cls` from stored fields (paths back to `Path`)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise InputError(f"the job's settings have fields a {cls.__name__} has not: {', '.join(unknown)}", "submit jobs through the page or the API")
    paths = {name for name, f in known.items() if "Path" in str(f.type)}
    values = {k: (Path(v) if k in paths and isinstance(v, str) else v) for k, v in fields.items()}
    return cls(**{**values, **overrides})


# -- running one job ----------------------------------------------------------------------------


class JobReporter:
    """The progress protocol of the jobs (`SamplingProgress`, `StepsProgress`), reporting to
    the queue: every report may raise `Cancelled`, `LeaseLost` or `Stopping`, which stops the
    job where it is."""

    def __init__(self, queue: SqliteJobQueue, claim: Claim, lease_seconds: float, stopping: threading.Event, unit: str = "denoising step") -> None:
        self.queue, self.claim, self.lease_seconds, self.stopping = queue, claim, lease_seconds, stopping
        self.unit = unit  # what a step is: a denoising step, a VAE tile
        self.notes: list[str] = []
        self.verdict = "run"
        self.last = 0.0

    def report(self, progress: float | None, message: str, force: bool = False) -> None:
        if self.stopping.is_set():
            raise Stopping()
        now = time.monotonic()
        if force or now - self.last >= HEARTBEAT_EVERY:
            self.last = now
            self.verdict = self.queue.heartbeat(self.claim, self.lease_seconds, progress, message)
        if self.verdict == "cancel":
            raise Cancelled()
        if self.verdict == "lost":
            raise LeaseLost()

    def status(self, message: str) -> None:
        self.report(None, message, force=True)

    def video(self, index: int, total: int, prompt: str) -> None:
        self.report(None, "denoising ...")

    def step(self, done: int, total: int) -> None:
        self.report(done / total, f"{self.unit} {done}/{total}", force=done == total)

    def notice(self, kind: str, message: str) -> None:
        self.notes.append(f"{kind}: {message}")


class Models:
    """The models a worker keeps loaded between jobs."""

    def __init__(self) -> None:
        from ..jobs.sampling import PipelineCache
        from ..jobs.vae import VaeCache

        self.pipelines = PipelineCache()
        self.vaes = VaeCache()


def run_t2v_job(fields: dict[str, Any], folder: Path, reporter: JobReporter, models: Models) -> dict[str, Any]:
    from ..jobs.sampling import run_sampling
    from ..jobs.sampling_plan import SamplingJob

    summary = run_sampling(job_from_settings(SamplingJob, fields, output_dir=folder), reporter, pipelines=models.pipelines)
    record = summary.videos[0]
    return {"files": {"video": Path(record["video"]).name, "sidecar": Path(record["sidecar"]).name}, "record": record}


def run_edit_job(fields: dict[str, Any], folder: Path, reporter: JobReporter, models: Models) -> dict[str, Any]:
    from ..jobs.edit import EditJob, plan_edit, run_edit

    job = job_from_settings(EditJob, fields)
    if not job.video.is_file():  # the API's remix source, deleted while the remix waited
        raise InputError("the source video was deleted before this job ran", "start it again from a video that still exists")
    summary = run_edit(plan_edit(dataclasses.replace(job, output=folder / job.output.name)), reporter)
    record = summary.record
    return {"files": {"video": Path(record["video"]).name, "sidecar": Path(record["sidecar"]).name}, "record": record}


def run_vae_job(fields: dict[str, Any], folder: Path, reporter: JobReporter, models: Models) -> dict[str, Any]:
    from ..jobs.vae import VaeJob, plan_vae, run_vae

    reporter.unit = "VAE tile"
    summary = run_vae(plan_vae(job_from_settings(VaeJob, fields, output_dir=folder)), reporter, models.vaes)
    record = {"frames": summary.frames, "size": list(summary.size), "psnr": summary.psnr, "ssim": summary.ssim}
    return {"files": {"video": summary.output.name, "sidecar": summary.sidecar.name if summary.sidecar else None}, "record": record}


RUNNERS: dict[str, Callable[[dict[str, Any], Path, JobReporter, Models], dict[str, Any]]] = {"t2v": run_t2v_job, "edit": run_edit_job, "vae": run_vae_job}


def attempt_folder(folder: Path, attempt: int) -> Path:
    """Where an attempt writes: beside the job's folder (so paths relative to it still hold
    after the rename), hidden."""
    return folder.parent / f".{folder.name}.attempt-{attempt}"


def error_of(exc: BaseException) -> tuple[str, str]:
    """(code, one-line message) of a failed job, as the API and the page show it."""
    if isinstance(exc, Cancelled):
        return "cancelled", "cancelled"
    if isinstance(exc, OSPError):
        return ("invalid_request" if isinstance(exc, ValueError) else "job_failed"), str(exc)
    text = str(exc).strip().splitlines()
    return "internal_error", type(exc).__name__ + (f": {text[0]}" if text else "")


class Worker:
    """Claims jobs and runs them until `stopping` is set."""

    def __init__(self, config: WorkerConfig, stopping: threading.Event | None = None) -> None:
        self.config = config
        self.name = config.name or worker_name()
        self.queue = SqliteJobQueue(config.database)
        self.stopping = stopping or threading.Event()
        self.models: Models | None = None

    def run_forever(self) -> None:
        while not self.stopping.is_set():
            claim = self.queue.claim(self.name, self.config.lease_seconds)
            if claim is None:
                self.stopping.wait(IDLE_POLL)
            else:
                self.run(claim)

    def run(self, claim: Claim) -> None:
        """Run one claimed job to its end in the queue (finished, failed, released or lost)."""
        job = claim.job
        scratch: Path | None = None
        reporter = JobReporter(self.queue, claim, self.config.lease_seconds, self.stopping)
        beat = threading.Event()
        threading.Thread(target=self._keep_lease, args=(claim, beat), daemon=True).start()
        try:
            if job.kind not in RUNNERS or not isinstance(job.settings.get("job"), dict) or not isinstance(job.settings.get("folder"), str):
                raise InputError(f"job {job.id} is not a job osp can run (kind '{job.kind}', settings without a job or a folder)", "submit jobs through the page or the API")
            folder = Path(job.settings["folder"])
            scratch = attempt_folder(folder, claim.attempt)
            if self.models is None:
                self.models = Models()
            fields = {**job.settings["job"], "device": self.config.device, "dtype": self.config.dtype}
            result = RUNNERS[job.kind](fields, scratch, reporter, self.models)
            if job.settings.get("previews") and result["files"]["video"]:
                from ..io.previews import write_previews

                write_previews(scratch / result["files"]["video"], scratch / "thumbnail.png", scratch / "spritesheet.png")
                result["files"].update(thumbnail="thumbnail.png", spritesheet="spritesheet.png")
            result["notes"] = reporter.notes
            result["record"] = {k: v for k, v in result["record"].items() if k not in ("video", "sidecar")}  # absolute scratch paths
            self._publish(claim, scratch, folder, result)
        except Stopping:
            self.queue.release(claim)
        except LeaseLost:
            log.warning("job %s: another worker took it over; this attempt is dropped", job.id)
        except BaseException as exc:  # noqa: BLE001 - every failure ends the job, the worker goes on
            if not isinstance(exc, OSPError):
                log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.queue.fail(claim, *error_of(exc))
            if not isinstance(exc, Exception):
                raise
        finally:
            beat.set()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _publish(self, claim: Claim, scratch: Path, folder: Path, result: dict[str, Any]) -> None:
        """Move the attempt's files into place, then record the result; if the queue refuses
        it (the job was deleted, or lost), the files go again."""
        # still this worker's? (a worker that hung and came back must not touch the folder of
        # the attempt that took its job over)
        verdict = self.queue.heartbeat(claim, self.config.lease_seconds)
        if verdict == "lost":
            raise LeaseLost()
        if verdict == "cancel":
            raise Cancelled()
        if folder.exists():  # a failed earlier publish of this job (never another job's: ids are unique)
            shutil.rmtree(folder)
        scratch.rename(folder)
        if not self.queue.finish(claim, result):
            shutil.rmtree(folder, ignore_errors=True)

    def _keep_lease(self, claim: Claim, done: threading.Event) -> None:
        """Renew the lease while the job runs, also through long phases without reports (model
        loading); a cancel heard here is acted on at the job's next report."""
        every = max(self.config.lease_seconds / 4, 0.05)
        while not done.wait(every):
            try:
                self.queue.heartbeat(claim, self.config.lease_seconds)
            except Exception:  # noqa: BLE001 - a busy database: the next beat tries again
                log.warning("job %s: could not renew its lease", claim.job.id)


def remove_job_files(settings: dict[str, Any], root: Path) -> None:
    """Remove a job's folder, when it lies inside `root` (the server's output folder)."""
    folder = Path(settings.get("folder", "")).resolve()
    if folder != root.resolve() and folder.is_relative_to(root.resolve()):
        shutil.rmtree(folder, ignore_errors=True)


# -- worker processes -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: this process is killed when the server that started it dies (even by kill -9),
    so a restarted server does not find an old worker still running."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """One worker process: `python -m osp_core.serve.worker CONFIG_JSON [PARENT_PID]`."""
    _die_with_parent()
    if len(argv) > 1 and os.getppid() != int(argv[1]):
        return 0  # the server died before this worker could follow it
    logging.basicConfig(level=logging.INFO, format="osp worker: %(message)s")
    config = WorkerConfig(**json.loads(argv[0]))
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Ctrl-C in a terminal reaches the whole process group: the server stops its workers (SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Worker(config, stopping).run_forever()
    return 0


def device_env(env: dict[str, str], index: int, count: int, device: str | None) -> dict[str, str]:
    """The environment of worker `index` of `count`: with several workers on accelerators, each
    sees one device (the index-th of those visible to the server); several workers share the
    CPU cores rather than each starting a thread per core."""
    if count > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    if count > 1 and device != "cpu":
        for name in ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
            visible = [d for d in env[name].split(",") if d] if env.get(name) else [str(i) for i in range(count)]
            env[name] = visible[index % len(visible)]
    return env


class WorkerPool:
    """`count` worker processes on one queue; a worker that dies, or hangs past its lease, is
    started again and its job goes back to the queue at once."""

    def __init__(self, config: WorkerConfig, count: int, env: dict[str, str] | None = None) -> None:
        self.config, self.count, self.env = config, count, env
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "osp_core.serve.worker", json.dumps(dataclasses.asdict(self.config)), str(os.getpid())]
        return subprocess.Popen(args, env=device_env(dict(self.env or os.environ), index, self.count, self.config.device))

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.count)]
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        queue = SqliteJobQueue(self.config.database)
        while not self.stopping.wait(0.5):
            self._kill_hung(queue)
            for i, process in enumerate(self.processes):
                if process.poll() is not None and not self.stopping.is_set():
                    log.warning("worker %d exited (code %s); starting another", process.pid, process.returncode)
                    self.processes[i] = self._spawn(i)
                    queue.requeue_dead(is_alive)  # its job waits no lease out

    def _kill_hung(self, queue: SqliteJobQueue) -> None:
        """A worker of this pool whose job's lease ran out is alive but silent (stopped, stuck in
        a call that never returns): kill it, so that it is started again and its job re-queued."""
        ours = {p.pid: p for p in self.processes if p.poll() is None}
        for worker in queue.stale_workers():
            process = ours.get(local_pid(worker))
            if process is not None:
                log.warning("worker %d stopped renewing its job's lease; killing it", process.pid)
                process.kill()
                process.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every worker: a running job goes back to the queue at its next report."""
        self.stopping.set()
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
