"""Console output: human text on stderr, machine output (--json) on stdout."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)


def progress(transient: bool = False) -> Progress:
    """A rich progress bar on stderr (silent when stderr is not a terminal)."""
    return Progress(
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
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
