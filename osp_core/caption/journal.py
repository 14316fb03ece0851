"""The resumable record of a captioning job: append-only JSONL files, merged into the final JSON.

Each rank appends to its own `rank{N}.jsonl` in `<output>.journal/`, one line per clip, flushed
as soon as the clip is done, so a crash loses at most the clips in flight. Every run starts its
file with a header holding the settings that shape the results; a resume with other settings is
refused rather than mixing two kinds of annotations. Reading takes every file in the folder, so a
job can be resumed with a different number of ranks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import InputError
from ..io import json_dumps as dumps
from ..io import write_json

CAPTIONED = "captioned"
DROPPED = "dropped"
FAILED = "failed"
DONE = (CAPTIONED, DROPPED)  # a rerun skips these; failed clips are tried again


def journal_dir(output: Path) -> Path:
    """`<output>.journal/`, beside the annotation file."""
    return output.with_name(output.name + ".journal")


class JournalWriter:
    """Appends one rank's records; every line is flushed, `sync()` forces them to disk."""

    def __init__(self, directory: Path, rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"rank{rank}.jsonl"
        self._file: TextIO = open(self.path, "a+", encoding="utf-8")
        # A run killed mid-line leaves a partial last line: start on a fresh line so our first
        # record is not glued onto it (the reader skips the partial line).
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(self._file.tell() - 1)
            if self._file.read(1) != "\n":
                self._file.write("\n")

    def header(self, settings: dict[str, Any], world_size: int) -> None:
        self._write({"type": "header", "settings": settings, "world_size": world_size, "t": time.time()})

    def record(self, key: str, path: str, status: str, **fields: Any) -> None:
        self._write({"type": "clip", "key": key, "path": path, "status": status, "t": time.time(), **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        self._file.write(dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


@dataclass
class JournalState:
    """What the journal holds: the run headers and the final record of each clip."""

    headers: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def done(self) -> set[str]:
        return {k for k, r in self.records.items() if r["status"] in DONE}


def read_journal(directory: Path) -> JournalState:
    """Merge every `*.jsonl` in `directory`: per clip a done record beats a failure, later beats
    earlier; a whole-file failure is dropped when the file was read again after it."""
    state = JournalState()
    if not directory.is_dir():
        return state
    lines: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the partial last line of a killed run
                if isinstance(obj, dict):
                    lines.append(obj)
    state.headers = [o for o in lines if o.get("type") == "header"]
    clips = sorted((o for o in lines if o.get("type") == "clip"), key=lambda o: o.get("t", 0.0))
    latest_per_path: dict[str, float] = {}
    for rec in clips:
        key = rec["key"]
        old = state.records.get(key)
        if old is None or rec["status"] in DONE or old["status"] == FAILED:
            state.records[key] = rec
        latest_per_path[rec["path"]] = rec.get("t", 0.0)
    # A whole-file failure (unreadable file) is stale once the file was read in a later run.
    for key in [k for k, r in state.records.items() if r["status"] == FAILED and r.get("scope") == "file"]:
        rec = state.records[key]
        if latest_per_path[rec["path"]] > rec.get("t", 0.0):
            del state.records[key]
    return state


def check_settings(state: JournalState, settings: dict[str, Any], output: Path) -> None:
    """Refuse to resume a journal written with settings that shape results differently."""
    for header in state.headers:
        old = header.get("settings", {})
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            what = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
            raise InputError(
                f"'{output}' was started with other settings ({what})",
                "resume with the same options, or pass --overwrite to start over",
            )


def annotations(state: JournalState) -> list[dict[str, Any]]:
    """The captioned clips as Open-Sora-Plan annotation entries, sorted by path then frame."""
    entries = [r["annotation"] for r in state.records.values() if r["status"] == CAPTIONED]

    def order(entry: dict[str, Any]) -> tuple[str, int]:
        start = entry.get("frame_idx", "0:0").split(":")[0]
        return entry["path"], int(start)

    return sorted(entries, key=order)


def write_annotations(output: Path, entries: list[dict[str, Any]]) -> None:
    """The final annotation JSON, written to a temporary file and renamed."""
    write_json(output, entries, indent=2, ensure_ascii=False)
