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


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner on stderr while something loads (silent when stderr is not a terminal)."""
    if not err.is_terminal:
        yield
        return
    with err.status(message):
        yield


def print_json(data: Any) -> None:
    from osp_core.io.jsonfile import dumps

    sys.stdout.write(dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
