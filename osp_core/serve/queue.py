"""The job queue behind `osp serve`: every job of the page and of the video API, its settings,
status, progress and result, in one SQLite database in the output folder (WAL mode, so readers
never wait for the writer and a killed process loses nothing that was committed).

Workers take jobs with `claim`, which hands out a lease: a worker renews it with `heartbeat`
while it runs, and a job whose lease runs out (its worker died) goes back to the queue, or
fails once it has been tried `max_attempts` times. Every call that changes a running job
names its `Claim`, so a worker that lost its lease can no longer finish, fail or report the
job another worker now holds (fencing). `JobQueue` is the whole interface the faces and the
workers use; another backend (PostgreSQL for workers on several machines) implements the same
methods.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import InputError, OSPError

QUEUED, IN_PROGRESS, COMPLETED, FAILED = "queued", "in_progress", "completed", "failed"
DATABASE_NAME = "queue.sqlite3"
MAX_ATTEMPTS = 3
# what a worker hears back when it reports: go on, stop (the job was cancelled or deleted),
# or stop and drop everything (the lease went to another worker)
Verdict = Literal["run", "cancel", "lost"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    worker TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    released INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error_code TEXT,
    error_message TEXT,
    remixed_from TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS runs (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT,
    PRIMARY KEY (job_id, attempt)
);
"""
SCHEMA_VERSION = 1


class QueueFull(OSPError):
    """More jobs wait than the server takes (`--max-queue`)."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} jobs are waiting, the most this server queues", "try again once some have finished")
        self.waiting = waiting


@dataclass(frozen=True)
class JobRow:
    """One job as the queue holds it (times in seconds since the epoch)."""

    id: str
    seq: int
    kind: str  # what runs it: t2v, edit, vae (`worker.RUNNERS`)
    owner: str  # who made it and may see it: "api", or "page"
    model: str
    prompt: str
    settings: dict[str, Any]
    status: str
    progress: float  # 0..1
    message: str  # what the job is doing, or why it was re-queued
    created_at: float
    started_at: float | None
    completed_at: float | None
    worker: str | None
    lease_until: float | None
    attempts: int  # claims so far, released ones included
    released: int  # claims handed back unrun by a stopping worker (not counted against max_attempts)
    cancel_requested: bool
    deleted: bool
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    remixed_from: str | None

    @property
    def finished(self) -> bool:
        return self.status in (COMPLETED, FAILED)


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a job."""

    job: JobRow
    worker: str
    attempt: int


class JobQueue(Protocol):
    """What the faces (API, page) and the workers need of a queue."""

    def submit(self, kind: str, settings: dict[str, Any], *, owner: str, model: str, prompt: str, remixed_from: str | None = None, max_waiting: int | None = None, job_id: str | None = None) -> JobRow: ...
    def claim(self, worker: str, lease_seconds: float) -> Claim | None: ...
    def heartbeat(self, claim: Claim, lease_seconds: float, progress: float | None = None, message: str | None = None) -> Verdict: ...
    def finish(self, claim: Claim, result: dict[str, Any]) -> bool: ...
    def fail(self, claim: Claim, code: str, message: str) -> bool: ...
    def release(self, claim: Claim) -> bool: ...
    def get(self, job_id: str, owner: str | None = None) -> JobRow | None: ...
    def list(self, owner: str | None = None, limit: int = 20, after: str | None = None, order: str = "desc") -> tuple[list[JobRow], bool]: ...
    def cancel(self, job_id: str, owner: str | None = None) -> JobRow | None: ...
    def delete(self, job_id: str, owner: str | None = None) -> JobRow | None: ...
    def requeue_dead(self, is_alive: Callable[[str], bool | None]) -> int: ...
    def stale_workers(self) -> list[str]: ...
    def counts(self) -> dict[str, int]: ...


def new_job_id() -> str:
    """`video_` + the time in nanoseconds + randomness: ids sort in creation order, so a list's
    `after` cursor works even when its video has been deleted since."""
    return f"video_{time.time_ns():016x}{secrets.token_hex(4)}"


def _row(values: sqlite3.Row) -> JobRow:
    data = dict(values)
    return JobRow(
        **{
            **data,
            "settings": json.loads(data["settings"]),
            "result": None if data["result"] is None else json.loads(data["result"]),
            "cancel_requested": bool(data["cancel_requested"]),
            "deleted": bool(data["deleted"]),
        }
    )


class SqliteJobQueue:
    """`JobQueue` in one SQLite file; safe across threads and processes (each call opens its own
    connection; every change is one transaction, taken with BEGIN IMMEDIATE so that two workers
    never claim the same job)."""

    def __init__(self, path: str | Path, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.path = Path(path)
        self.max_attempts = max_attempts
        try:
            with self._connect() as con:
                con.execute("PRAGMA journal_mode=WAL")
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    con.executescript(SCHEMA)
                    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise InputError(f"the job database '{self.path}' cannot be used ({exc})", "move it away to start with an empty queue, or pass another --output-dir") from None
        if version != 0 and version != SCHEMA_VERSION:
            raise InputError(f"the job database '{self.path}' was written by another osp (schema {version}, this osp reads {SCHEMA_VERSION})", "use that osp, or move the file away to start with an empty queue")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA synchronous=NORMAL")  # with WAL: nothing committed is lost when a process dies
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the database's write lock at once."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- the faces ----------------------------------------------------------------------------

    def submit(self, kind: str, settings: dict[str, Any], *, owner: str, model: str, prompt: str, remixed_from: str | None = None, max_waiting: int | None = None, job_id: str | None = None) -> JobRow:
        """Queue a job; `QueueFull` when `max_waiting` jobs already wait."""
        job_id = job_id or new_job_id()
        with self._write() as con:
            if max_waiting is not None:
                waiting = con.execute("SELECT COUNT(*) FROM jobs WHERE status = ? AND deleted = 0", (QUEUED,)).fetchone()[0]
                if waiting >= max_waiting:
                    raise QueueFull(waiting)
            con.execute(
                "INSERT INTO jobs (id, kind, owner, model, prompt, settings, status, created_at, remixed_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, owner, model, prompt, json.dumps(settings), QUEUED, time.time(), remixed_from),
            )
            return _row(con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get(self, job_id: str, owner: str | None = None) -> JobRow | None:
        """The job, unless it is deleted or belongs to another owner."""
        with self._connect() as con:
            return self._owned(con, job_id, owner)

    def list(self, owner: str | None = None, limit: int = 20, after: str | None = None, order: str = "desc") -> tuple[list[JobRow], bool]:
        """(jobs in creation order, newest first unless order="asc", whether more follow);
        `after` is the id of the last job of the previous page (it need not exist any more)."""
        descending = order != "asc"
        where, args = ["deleted = 0"], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if after is not None:
            where.append("id < ?" if descending else "id > ?")
            args.append(after)
        with self._connect() as con:
            rows = con.execute(f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY id {'DESC' if descending else 'ASC'} LIMIT ?", (*args, limit + 1)).fetchall()
        return [_row(r) for r in rows[:limit]], len(rows) > limit

    def cancel(self, job_id: str, owner: str | None = None) -> JobRow | None:
        """Stop a job: a queued one fails at once ("cancelled"), a running one at its worker's
        next report. None when there is no such job."""
        with self._write() as con:
            row = self._owned(con, job_id, owner)
            if row is None:
                return None
            if row.status == QUEUED:
                con.execute("UPDATE jobs SET status = ?, completed_at = ?, error_code = 'cancelled', error_message = 'cancelled' WHERE id = ?", (FAILED, time.time(), job_id))
            elif row.status == IN_PROGRESS:
                con.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return _row(con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def delete(self, job_id: str, owner: str | None = None) -> JobRow | None:
        """Remove a job (the caller removes its files). A running job is cancelled and marked
        deleted: its worker removes the row when it stops. Returns the job as it was."""
        with self._write() as con:
            row = self._owned(con, job_id, owner)
            if row is None:
                return None
            if row.status == IN_PROGRESS:
                con.execute("UPDATE jobs SET cancel_requested = 1, deleted = 1 WHERE id = ?", (job_id,))
            else:
                con.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return row

    def counts(self) -> dict[str, int]:
        """Jobs by status (deleted ones left out)."""
        with self._connect() as con:
            rows = con.execute("SELECT status, COUNT(*) FROM jobs WHERE deleted = 0 GROUP BY status").fetchall()
        return {QUEUED: 0, IN_PROGRESS: 0, COMPLETED: 0, FAILED: 0, **{status: count for status, count in rows}}

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt at a job: worker, claimed_at, ended_at, outcome."""
        with self._connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM runs WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()]

    @staticmethod
    def _owned(con: sqlite3.Connection, job_id: str, owner: str | None) -> JobRow | None:
        found = con.execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
        row = None if found is None else _row(found)
        return row if row is not None and (owner is None or row.owner == owner) else None

    # -- the workers --------------------------------------------------------------------------

    def claim(self, worker: str, lease_seconds: float) -> Claim | None:
        """The oldest queued job, now this worker's for `lease_seconds`; None when none waits.
        Jobs whose lease ran out are put back first (or failed, after `max_attempts`)."""
        now = time.time()
        with self._write() as con:
            self._reap(con, now)
            found = con.execute("SELECT * FROM jobs WHERE status = ? AND deleted = 0 ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if found is None:
                return None
            attempt = found["attempts"] + 1
            con.execute(
                "UPDATE jobs SET status = ?, worker = ?, lease_until = ?, attempts = ?, started_at = COALESCE(started_at, ?), progress = 0, message = '' WHERE id = ?",
                (IN_PROGRESS, worker, now + lease_seconds, attempt, now, found["id"]),
            )
            con.execute("INSERT INTO runs (job_id, attempt, worker, claimed_at) VALUES (?, ?, ?, ?)", (found["id"], attempt, worker, now))
            job = _row(con.execute("SELECT * FROM jobs WHERE id = ?", (found["id"],)).fetchone())
        return Claim(job, worker, attempt)

    def _held(self, con: sqlite3.Connection, claim: Claim) -> sqlite3.Row | None:
        return con.execute("SELECT * FROM jobs WHERE id = ? AND status = ? AND worker = ? AND attempts = ?", (claim.job.id, IN_PROGRESS, claim.worker, claim.attempt)).fetchone()

    def heartbeat(self, claim: Claim, lease_seconds: float, progress: float | None = None, message: str | None = None) -> Verdict:
        """Renew the lease (and record progress); says whether to go on."""
        with self._write() as con:
            held = self._held(con, claim)
            if held is None:
                return "lost"
            con.execute(
                "UPDATE jobs SET lease_until = ?, progress = COALESCE(?, progress), message = COALESCE(?, message) WHERE id = ?",
                (time.time() + lease_seconds, progress, message, claim.job.id),
            )
            return "cancel" if held["cancel_requested"] else "run"

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Record the result; False when the claim was lost or the job deleted meanwhile (the
        worker then removes what it wrote)."""
        return self._end(claim, "completed", "UPDATE jobs SET status = ?, progress = 1, message = '', result = ?, completed_at = ?, lease_until = NULL WHERE id = ?", (COMPLETED, json.dumps(result), time.time(), claim.job.id))

    def fail(self, claim: Claim, code: str, message: str) -> bool:
        return self._end(claim, code, "UPDATE jobs SET status = ?, error_code = ?, error_message = ?, completed_at = ?, lease_until = NULL WHERE id = ?", (FAILED, code, message, time.time(), claim.job.id))

    def release(self, claim: Claim) -> bool:
        """Give the job back unrun (its worker is stopping): queued again; the attempt is kept
        in `runs` as released and not counted against `max_attempts`."""
        return self._end(claim, "released", "UPDATE jobs SET status = ?, worker = NULL, lease_until = NULL, released = released + 1, progress = 0, message = 'waiting (its worker stopped)' WHERE id = ?", (QUEUED, claim.job.id))

    def _end(self, claim: Claim, outcome: str, update: str, args: tuple[Any, ...]) -> bool:
        with self._write() as con:
            held = self._held(con, claim)
            if held is None:
                return False
            outcome = "deleted" if held["deleted"] else outcome
            con.execute("UPDATE runs SET ended_at = ?, outcome = ? WHERE job_id = ? AND attempt = ?", (time.time(), outcome, claim.job.id, claim.attempt))
            if held["deleted"]:
                con.execute("DELETE FROM jobs WHERE id = ?", (claim.job.id,))
                return False
            con.execute(update, args)
            return True

    def _reap(self, con: sqlite3.Connection, now: float, workers: list[str] | None = None) -> int:
        """Put back (or fail, or drop when deleted) running jobs whose lease ran out, or whose
        worker is one of `workers` (known dead)."""
        if workers is None:
            stale = con.execute("SELECT * FROM jobs WHERE status = ? AND lease_until < ?", (IN_PROGRESS, now)).fetchall()
        else:
            stale = [r for w in workers for r in con.execute("SELECT * FROM jobs WHERE status = ? AND worker = ?", (IN_PROGRESS, w)).fetchall()]
        for row in stale:
            con.execute("UPDATE runs SET ended_at = ?, outcome = 'lost' WHERE job_id = ? AND attempt = ?", (now, row["id"], row["attempts"]))
            if row["deleted"]:
                con.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
            elif row["cancel_requested"]:
                con.execute("UPDATE jobs SET status = ?, error_code = 'cancelled', error_message = 'cancelled', completed_at = ? WHERE id = ?", (FAILED, now, row["id"]))
            elif row["attempts"] - row["released"] >= self.max_attempts:
                message = f"its worker stopped while running it, {row['attempts'] - row['released']} times; the server log says why"
                con.execute("UPDATE jobs SET status = ?, error_code = 'worker_lost', error_message = ?, completed_at = ? WHERE id = ?", (FAILED, message, now, row["id"]))
            else:
                con.execute("UPDATE jobs SET status = ?, worker = NULL, lease_until = NULL, progress = 0, message = 'waiting again (its worker stopped)' WHERE id = ?", (QUEUED, row["id"]))
        return len(stale)

    def stale_workers(self) -> list[str]:
        """Workers holding a job whose lease ran out: dead, or hung."""
        with self._connect() as con:
            return [w for (w,) in con.execute("SELECT DISTINCT worker FROM jobs WHERE status = ? AND lease_until < ?", (IN_PROGRESS, time.time())).fetchall()]

    def reap(self) -> int:
        """Put back the jobs whose lease ran out (claims do this too); how many there were."""
        with self._write() as con:
            return self._reap(con, time.time())

    def requeue_dead(self, is_alive: Callable[[str], bool | None]) -> int:
        """Put back at once the running jobs of workers `is_alive` knows are dead (False; None:
        it cannot tell, and the lease decides). Run when a server starts: its old workers died
        with it."""
        with self._write() as con:
            workers = [w for (w,) in con.execute("SELECT DISTINCT worker FROM jobs WHERE status = ?", (IN_PROGRESS,)).fetchall()]
            dead = [w for w in workers if w is not None and is_alive(w) is False]
            return self._reap(con, time.time(), dead) if dead else 0
