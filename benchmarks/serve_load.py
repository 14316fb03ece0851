"""Load and fault runs of `osp serve`'s video API, against real server processes on 127.0.0.1,
driven by the official `openai` client.

    python benchmarks/serve_load.py load   [--creates 200 --threads 20 --workers 1 --max-queue 64 --steps 4]
    python benchmarks/serve_load.py faults [--jobs 20 --steps 30]

load: `--threads` client threads send `--creates` creates in all (as fast as each gets its
answer), then poll their jobs; a create answered 429 counts as refused (with its Retry-After),
never retried. Within `--limit` seconds every accepted job must complete, no id may repeat,
every job must have completed exactly once (the queue's `runs`), and the queue must drain.
Prints create and retrieve latencies (p50/p95), throughput, and the server's and workers'
resident memory before and after.

faults: (1) kill -9 of one of two workers mid-job, (2) kill -9 of the server mid-job and a
restart on the same folder; afterwards the database passes SQLite's integrity check, no job is
lost, stuck or run twice, and no attempt folder or temp file is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from osp_core.serve.queue import DATABASE_NAME, SqliteJobQueue  # noqa: E402
from tests.serve.browser import free_port  # noqa: E402


class Server:
    """`osp serve --no-page` in a child process."""

    def __init__(self, out: Path, *extra: str) -> None:
        self.port, self.out = free_port(), out
        self.log = out.parent / f"serve-{self.port}.log"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "osp_cli", "serve", "--no-page", "--model", "builtin:shapes", "--port", str(self.port), "-o", str(out), "--device", "cpu", "--dtype", "fp32", *extra]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("w"), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + 180
        while not re.search(r"at http://\S+", self.log.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text()[-2000:])
            time.sleep(0.2)
        self.api = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="unused", max_retries=0)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def worker_pids(server_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(server_pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def memory(server: Server) -> dict[str, float]:
    return {"server_mb": round(rss_mb(server.process.pid), 1), "workers_mb": [round(rss_mb(p), 1) for p in worker_pids(server.process.pid)]}


def percentile(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1] * 1000, 1) if len(values) > 1 else float("nan")


def wait_all(api: openai.OpenAI, ids: list[str], limit: float) -> list:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rows = [api.videos.retrieve(i) for i in ids]
        if all(r.status in ("completed", "failed") for r in rows):
            return rows
        time.sleep(0.5)
    raise TimeoutError("jobs did not end in time")


def check_queue(out: Path, ids: list[str]) -> dict[str, object]:
    """No job lost, stuck or run twice; the database intact; no attempt folder or temp file left."""
    queue = SqliteJobQueue(out / DATABASE_NAME)
    with sqlite3.connect(out / DATABASE_NAME) as con:
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    runs = {i: [r["outcome"] for r in queue.runs(i)] for i in ids}
    return {
        "integrity": integrity,
        "completed": sum(queue.get(i) is not None and queue.get(i).status == "completed" for i in ids),
        "lost_jobs": sum(queue.get(i) is None for i in ids),
        "stuck": queue.counts()["in_progress"] + queue.counts()["queued"],
        "completed_twice": sum(r.count("completed") > 1 for r in runs.values()),
        "reruns": {i: r for i, r in runs.items() if len(r) > 1},
        "leftovers": [str(p) for p in out.rglob(".*.attempt-*")] + [str(p) for p in out.rglob("*.tmp*")],
    }


def load(args: argparse.Namespace) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix="osp-load-")) / "out"
    server = Server(out, "--workers", str(args.workers), "--max-queue", str(args.max_queue))
    try:
        # one video first: the workers have loaded the model, so "before" and "after" compare
        # the same processes at rest, and any growth is the load's
        warm = server.api.videos.create(prompt="a red circle moving right", extra_body={"steps": args.steps, "seed": 0}).id
        wait_all(server.api, [warm], 300)
        before = memory(server)
        creates, retrieves, accepted, refused, retry_after = [], [], [], [], []
        lock = threading.Lock()
        per_thread = [args.creates // args.threads + (i < args.creates % args.threads) for i in range(args.threads)]

        def client(n: int, seed0: int) -> None:
            api = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
            mine = []
            for k in range(n):
                t0 = time.perf_counter()
                try:
                    video = api.videos.create(prompt="a red circle moving right", extra_body={"steps": args.steps, "seed": seed0 + k})
                    mine.append(video.id)
                    with lock:
                        creates.append(time.perf_counter() - t0)
                except openai.RateLimitError as exc:
                    with lock:
                        creates.append(time.perf_counter() - t0)
                        refused.append(1)
                        retry_after.append(exc.response.headers.get("retry-after"))
            with lock:
                accepted.extend(mine)
            pending = set(mine)
            deadline = time.monotonic() + args.limit
            while pending and time.monotonic() < deadline:
                for job in list(pending):
                    t0 = time.perf_counter()
                    status = api.videos.retrieve(job).status
                    with lock:
                        retrieves.append(time.perf_counter() - t0)
                    if status in ("completed", "failed"):
                        pending.discard(job)
                time.sleep(1.0)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n, 1000 * i)) for i, n in enumerate(per_thread)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        drained = time.perf_counter() - started
        rows = wait_all(server.api, accepted, 30)
        after = memory(server)
        result = {
            "settings": vars(args),
            "accepted": len(accepted),
            "refused_429": len(refused),
            "retry_after_seen": sorted({r for r in retry_after if r}, key=float)[:5],
            "unique_ids": len(set(accepted)) == len(accepted),
            "statuses": {s: sum(r.status == s for r in rows) for s in ("completed", "failed")},
            "drain_seconds": round(drained, 1),
            "videos_per_minute": round(60 * len(accepted) / drained, 1),
            "create_ms": {"p50": percentile(creates, 50), "p95": percentile(creates, 95)},
            "retrieve_ms": {"p50": percentile(retrieves, 50), "p95": percentile(retrieves, 95), "count": len(retrieves)},
            "memory_before": before,
            "memory_after": after,
            "queue": check_queue(out, accepted),
        }
    finally:
        server.stop()
    return result


def faults(args: argparse.Namespace) -> dict[str, object]:
    results = {}
    # (1) one of two workers killed mid-job
    out = Path(tempfile.mkdtemp(prefix="osp-faults-")) / "out"
    server = Server(out, "--workers", "2")
    try:
        ids = [server.api.videos.create(prompt="a blue square moving up", extra_body={"steps": args.steps, "seed": i}).id for i in range(args.jobs)]
        queue = SqliteJobQueue(out / DATABASE_NAME)
        while not (running := [i for i in ids if queue.get(i).status == "in_progress" and queue.get(i).progress > 0]):
            time.sleep(0.1)
        os.kill(int(queue.get(running[0]).worker.split(":")[1]), signal.SIGKILL)
        rows = wait_all(server.api, ids, args.limit)
        results["worker_killed"] = {"statuses": [r.status for r in rows].count("completed"), **check_queue(out, ids)}
    finally:
        server.stop()
    # (2) the server killed mid-job, then restarted on the same folder
    out = Path(tempfile.mkdtemp(prefix="osp-faults-")) / "out"
    server = Server(out)
    ids = [server.api.videos.create(prompt="a green circle moving left", extra_body={"steps": args.steps, "seed": i}).id for i in range(args.jobs)]
    queue = SqliteJobQueue(out / DATABASE_NAME)
    while queue.counts()["completed"] < 2 or not any(queue.get(i).status == "in_progress" and queue.get(i).progress > 0 for i in ids):
        time.sleep(0.1)
    server.process.kill()
    server.process.wait()
    at_kill = queue.counts()
    server = Server(out)
    try:
        t0 = time.perf_counter()
        rows = wait_all(server.api, ids, args.limit)
        results["server_killed"] = {"at_kill": at_kill, "recovered_seconds": round(time.perf_counter() - t0, 1), "completed": [r.status for r in rows].count("completed"), **check_queue(out, ids)}
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["load", "faults"])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--limit", type=float, default=900, help="seconds the jobs may take to drain")
    args = parser.parse_args()
    print(json.dumps(load(args) if args.mode == "load" else faults(args), indent=2))


if __name__ == "__main__":
    main()
