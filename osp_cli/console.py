"""Console output: human text on stderr, machine output (--json) on stdout."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)


_interrupted = False
_signal: int = signal.SIGINT


def install_interrupt_handler() -> None:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered: a KeyboardInterrupt that
    C code swallows (e.g. raised inside a library callback) still stops the run at the next
    progress update. SIGTERM (a scheduler's pre-emption, torchrun stopping the other ranks)
    does the same, so a terminated run cleans up as an interrupted one does."""

    def on_signal(signum: int, frame: object) -> None:
        global _interrupted, _signal
        _interrupted, _signal = True, signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def interrupted_exit_code() -> int:
    """128 + the signal that stopped the run (130 for Ctrl-C, 143 for SIGTERM), as shells report."""
    return 128 + int(_signal)


def raise_if_interrupted() -> None:
    if _interrupted:
        raise KeyboardInterrupt


class InterruptibleProgress(Progress):
    """rich Progress whose updates stop the run after a Ctrl-C (see install_interrupt_handler)."""

    def advance(self, task_id, advance: float = 1) -> None:  # type: ignore[override]
        raise_if_interrupted()
        super().advance(task_id, advance)

    def update(self, task_id, **kwargs) -> None:  # type: ignore[override]
        raise_if_interrupted()
        super().update(task_id, **kwargs)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr (silent when stderr is not a terminal)."""
    return InterruptibleProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal,
    )


class JobBar:
    """A job's progress on stderr: a spinner for phases without steps (`status`), then bars (one
    live display at a time, as rich requires). `step` before any bar starts one named `label`."""

    def __init__(self, label: str = "", enabled: bool = True, transient: bool = False) -> None:
        self.label = label
        self.enabled = enabled
        self.bar = progress(transient=transient)
        self.bar_started = False
        self.task: Any = None
        self.spinner: Any = None

    def __enter__(self) -> JobBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_spinner()
        if self.bar_started:
            self.bar.__exit__(*exc)

    def _stop_spinner(self) -> None:
        if self.spinner is not None:
            self.spinner.__exit__(None, None, None)
            self.spinner = None

    def status(self, message: str) -> None:
        self._stop_spinner()
        if self.enabled and not self.bar_started:
            self.spinner = status(message)
            self.spinner.__enter__()

    def new_bar(self, description: str, total: int | None = None) -> None:
        """A bar for the next phase with steps (the spinner stops)."""
        self._stop_spinner()
        if not self.bar_started:
            self.bar.__enter__()
            self.bar_started = True
        self.task = self.bar.add_task(description, total=total, visible=self.enabled)

    def step(self, done: int, total: int) -> None:
        if self.task is None:
            self.new_bar(self.label, total)
        self.bar.update(self.task, completed=done, total=total)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner on stderr while something loads (silent when stderr is not a terminal)."""
    if not err.is_terminal:
        yield
        return
    with err.status(message):
        yield


def counted(count: int, noun: str) -> str:
    """'1 frame', '17 frames'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_json(data: Any) -> None:
    from osp_core.io.jsonfile import dumps

    sys.stdout.write(dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
