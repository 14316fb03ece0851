"""The job queue on its own (real SQLite files, threads and processes as the workers): order,
atomic claims, leases and fencing, cancel and delete, restart, and the bound on waiting jobs."""

from __future__ import annotations

import threading
import time

import pytest

from osp_core.serve.queue import QueueFull, SqliteJobQueue


def submit(queue: SqliteJobQueue, n: int = 1, owner: str = "api") -> list[str]:
    return [queue.submit("t2v", {"job": {"n": i}, "folder": f"/x/{i}"}, owner=owner, model="m", prompt=f"p{i}").id for i in range(n)]


def test_jobs_are_claimed_oldest_first_and_each_by_one_worker_only(tmp_path):
    """Eight threads, each with its own connection, claim 40 jobs as fast as they can: every
    job is claimed exactly once, and the first claims follow the order of submission."""
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    ids = submit(queue, 40)
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claim_all(worker: str) -> None:
        mine = SqliteJobQueue(queue.path)
        while (claim := mine.claim(worker, 30)) is not None:
            with lock:
                claimed.append((claim.job.id, worker))

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(job for job, _ in claimed) == sorted(ids)
    assert queue.counts() == {"queued": 0, "in_progress": 40, "completed": 0, "failed": 0}
    fresh = SqliteJobQueue(tmp_path / "q2.sqlite3")
    order = submit(fresh, 3)
    assert [fresh.claim("w", 30).job.id for _ in range(3)] == order


def test_a_lost_lease_puts_the_job_back_and_fences_the_old_worker(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3", max_attempts=2)
    (job,) = submit(queue)
    first = queue.claim("w1", lease_seconds=0.2)
    assert queue.heartbeat(first, 0.2, progress=0.5, message="denoising step 1/2") == "run"
    assert (queue.get(job).progress, queue.get(job).message) == (0.5, "denoising step 1/2")
    time.sleep(0.3)  # w1 went silent
    second = queue.claim("w2", lease_seconds=30)
    assert second is not None and second.job.id == job and second.attempt == 2
    # the first worker wakes up: it can neither report, nor finish, nor fail the job
    assert queue.heartbeat(first, 30) == "lost"
    assert queue.finish(first, {"files": {}}) is False and queue.fail(first, "x", "y") is False
    assert queue.finish(second, {"files": {"video": "a.mp4"}}) is True
    row = queue.get(job)
    assert (row.status, row.attempts, row.result) == ("completed", 2, {"files": {"video": "a.mp4"}})
    assert [(r["worker"], r["outcome"]) for r in queue.runs(job)] == [("w1", "lost"), ("w2", "completed")]


def test_a_job_whose_workers_keep_dying_fails_after_its_attempts(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3", max_attempts=2)
    (job,) = submit(queue)
    for attempt in (1, 2):
        assert queue.claim(f"w{attempt}", lease_seconds=0.05).attempt == attempt
        time.sleep(0.1)
    assert queue.claim("w3", 30) is None
    row = queue.get(job)
    assert (row.status, row.error_code) == ("failed", "worker_lost") and "2 times" in row.error_message


def test_dead_workers_jobs_are_requeued_at_once_and_live_ones_are_left(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    dead, alive, unknown = submit(queue, 3)
    for worker in ("dead", "alive", "elsewhere"):
        queue.claim(worker, 300)
    verdicts = {"dead": False, "alive": True, "elsewhere": None}
    assert queue.requeue_dead(verdicts.__getitem__) == 1
    assert [queue.get(j).status for j in (dead, alive, unknown)] == ["queued", "in_progress", "in_progress"]
    assert queue.get(dead).message == "waiting again (its worker stopped)"


def test_cancel_and_delete(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    running, waiting, done = submit(queue, 3)
    claim = queue.claim("w", 30)
    assert claim.job.id == running
    # a queued job fails at once, a running one hears it at its next report
    assert (queue.cancel(waiting).status, queue.get(waiting).error_code) == ("failed", "cancelled")
    assert queue.cancel(running).status == "in_progress" and queue.heartbeat(claim, 30) == "cancel"
    assert queue.fail(claim, "cancelled", "cancelled") and queue.get(running).status == "failed"
    # deleting a running job hides it at once; the worker's end removes it and refuses its result
    claim = queue.claim("w", 30)
    assert claim.job.id == done
    assert queue.delete(done).status == "in_progress" and queue.get(done) is None
    assert queue.heartbeat(claim, 30) == "cancel" and queue.finish(claim, {}) is False
    assert queue.runs(done)[0]["outcome"] == "deleted" and done not in [r.id for r in queue.list(limit=10)[0]]
    assert queue.delete("video_nope") is None and queue.cancel("video_nope") is None


def test_owners_see_only_their_jobs_and_lists_page_newest_first(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    api = submit(queue, 5)
    (page,) = submit(queue, 1, owner="page")
    assert queue.get(page, owner="api") is None and queue.get(page, owner="page").id == page
    assert queue.delete(page, owner="api") is None and queue.cancel(page, owner="api") is None
    first, more = queue.list(owner="api", limit=2)
    assert [r.id for r in first] == api[::-1][:2] and more
    second, more = queue.list(owner="api", limit=2, after=first[-1].id)
    third, more_after = queue.list(owner="api", limit=2, after=second[-1].id)
    assert [r.id for r in first + second + third] == api[::-1] and more and not more_after
    oldest, _ = queue.list(owner="api", limit=2, order="asc")
    assert [r.id for r in oldest] == api[:2]
    # a cursor whose video was deleted meanwhile still pages on (ids sort by creation time)
    queue.delete(api[2])
    rest, more = queue.list(owner="api", limit=10, after=api[2])
    assert [r.id for r in rest] == [api[1], api[0]] and not more


def test_waiting_jobs_are_bounded(tmp_path):
    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    submit(queue, 2)
    with pytest.raises(QueueFull, match="2 jobs are waiting"):
        queue.submit("t2v", {"folder": "/x"}, owner="api", model="m", prompt="p", max_waiting=2)
    queue.claim("w", 30)  # one starts: room for one more
    queue.submit("t2v", {"folder": "/x"}, owner="api", model="m", prompt="p", max_waiting=2)


def test_everything_committed_survives_a_new_process(tmp_path):
    """A server restart opens the same file: finished jobs keep their results, waiting jobs
    wait, and the releasing worker's attempt is kept on record but not counted."""
    import subprocess
    import sys

    queue = SqliteJobQueue(tmp_path / "q.sqlite3")
    done, released, waiting = submit(queue, 3)
    queue.finish(queue.claim("w", 30), {"files": {"video": "v.mp4"}})
    queue.release(queue.claim("w", 30))
    code = (
        "import sys, json; from osp_core.serve.queue import SqliteJobQueue;"
        "q = SqliteJobQueue(sys.argv[1]); rows = q.list(order='asc')[0];"
        "print(json.dumps([(r.status, r.attempts - r.released, r.result) for r in rows]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(queue.path)], capture_output=True, text=True, check=True).stdout
    import json

    assert json.loads(out) == [["completed", 1, {"files": {"video": "v.mp4"}}], ["queued", 0, None], ["queued", 0, None]]
    again = queue.claim("w2", 30)
    assert again.job.id == released and again.attempt == 2
    assert [(r["worker"], r["outcome"]) for r in queue.runs(released)] == [("w", "released"), ("w2", None)]  # every attempt kept


def test_a_file_that_is_not_the_queue_is_refused_in_one_line(tmp_path):
    from osp_core.errors import InputError

    (tmp_path / "queue.sqlite3").write_bytes(b"not a database, but some bytes" * 100)
    with pytest.raises(InputError, match="the job database .* cannot be used .*move it away"):
        SqliteJobQueue(tmp_path / "queue.sqlite3")
