"""`osp serve` as a durable queue, driven by the official `openai` client against real server
processes: two workers never run a job twice, a worker killed with -9 or hung mid-job loses
nothing (its job runs again on another), and a server killed with -9 mid-job restarts with its
finished jobs downloadable, its queued ones run, and the one it was running run again."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from osp_core.serve.queue import DATABASE_NAME, SqliteJobQueue
from tests.serve.browser import ServerProcess

openai = pytest.importorskip("openai")

FAST, SLOW = 4, 120  # denoising steps: ~0.3 s and ~5 s a video on 2 CPU cores
TIMEOUT = 180


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)


def create(api: openai.OpenAI, steps: int, seed: int) -> str:
    return api.videos.create(prompt="a red circle moving right", extra_body={"steps": steps, "seed": seed}).id


def wait_until(check, timeout: float = TIMEOUT, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def ended(api: openai.OpenAI, ids: list[str]) -> list | None:
    """The jobs, once every one has ended (completed or failed)."""
    rows = [api.videos.retrieve(i) for i in ids]
    return rows if all(r.status in ("completed", "failed") for r in rows) else None


def worker_pid(queue: SqliteJobQueue, job_id: str) -> int:
    return int(queue.get(job_id).worker.split(":")[1])


def attempt_folders(output_dir: Path) -> list[Path]:
    return list(output_dir.rglob(".*.attempt-*"))


def test_two_workers_share_the_queue_and_a_killed_or_hung_worker_loses_no_job(tmp_path):
    """One worker is killed with -9 mid-job, later another is stopped (SIGSTOP: alive, silent):
    the server restarts the first at once and kills the second once its lease runs out; both
    jobs run again on a live worker, and no job completes twice."""
    out = tmp_path / "out"
    server = ServerProcess(out, "--no-page", "--workers", "2", "--device", "cpu", "--dtype", "fp32", "--lease-seconds", "5")
    try:
        api, queue = client(server), SqliteJobQueue(out / DATABASE_NAME)
        ids = [create(api, SLOW if i < 3 else FAST, seed=i) for i in range(6)]

        def running_job(exclude: set[str]) -> str | None:
            return next((i for i in ids if i not in exclude and queue.get(i).status == "in_progress" and queue.get(i).progress > 0), None)

        killed = wait_until(lambda: running_job(set()), what="a job to run")
        killed_pid = worker_pid(queue, killed)
        os.kill(killed_pid, signal.SIGKILL)
        hung = wait_until(lambda: (job := running_job({killed})) and worker_pid(queue, job) != killed_pid and job, what="another job to run")
        hung_pid = worker_pid(queue, hung)
        os.kill(hung_pid, signal.SIGSTOP)
        done = wait_until(lambda: ended(api, ids), what="every job to end")
        assert [r.status for r in done] == ["completed"] * 6, [r.error for r in done]
        runs = {i: queue.runs(i) for i in ids}
        # every job completed exactly once; the killed and the hung worker's jobs ran again, on other workers
        assert all([r["outcome"] for r in runs[i]].count("completed") == 1 for i in ids)
        for victim, pid in ((killed, killed_pid), (hung, hung_pid)):
            assert [r["outcome"] for r in runs[victim]] == ["lost", "completed"] and f":{pid}:" not in runs[victim][1]["worker"]
        assert all(len(runs[i]) == 1 for i in ids if i not in (killed, hung))
        assert not Path(f"/proc/{hung_pid}").exists() or "zombie" in Path(f"/proc/{hung_pid}/status").read_text().lower()
        for i in ids:
            assert api.videos.download_content(i).content[4:8] == b"ftyp"
        assert attempt_folders(out) == []
    finally:
        server.stop()


def test_a_server_killed_mid_job_restarts_with_nothing_lost(tmp_path):
    out = tmp_path / "out"
    options = ("--no-page", "--device", "cpu", "--dtype", "fp32")
    server = ServerProcess(out, *options)
    queue = SqliteJobQueue(out / DATABASE_NAME)
    try:
        api = client(server)
        finished = create(api, FAST, seed=1)
        wait_until(lambda: api.videos.retrieve(finished).status == "completed", what="the first job")
        running, waiting = create(api, SLOW, seed=2), create(api, FAST, seed=3)
        wait_until(lambda: queue.get(running).status == "in_progress" and queue.get(running).progress > 0, what="the long job to run")
        pid = worker_pid(queue, running)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        # its worker dies with it (no orphan keeps running the job)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), timeout=10, what="the worker to die")
        assert [queue.get(i).status for i in (finished, running, waiting)] == ["completed", "in_progress", "queued"]
    finally:
        server.stop()
    server = ServerProcess(out, *options)
    try:
        api = client(server)
        assert api.videos.retrieve(finished).status == "completed"  # at once: nothing to redo
        assert api.videos.download_content(finished).content[4:8] == b"ftyp"
        rows = wait_until(lambda: ended(api, [running, waiting]), what="the restarted jobs")
        assert [r.status for r in rows] == ["completed", "completed"]
        assert [r["outcome"] for r in queue.runs(running)] == ["lost", "completed"]
        assert [r.id for r in api.videos.list(limit=10).data] == [waiting, running, finished]
        assert queue.counts()["in_progress"] == 0 and attempt_folders(out) == []
    finally:
        server.stop()
