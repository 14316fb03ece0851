"""What a running job reports, and the libraries' own progress output kept quiet meanwhile."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol


class StepsProgress(Protocol):
    """What a job without prompts reports (a VAE job): `status` for phases without steps
    (loading), `step` after every step (a tile). Raising from a callback stops the job."""

    def status(self, message: str) -> None: ...

    def step(self, done: int, total: int) -> None: ...


class SamplingProgress(Protocol):
    """What a run reports: `status` for phases without steps (loading, encoding), `video` when
    prompt `index` of `total` starts denoising, `step` after every denoising step, `notice`
    for warnings and notes ("warning" / "note"). Raising from a callback stops the run."""

    def status(self, message: str) -> None: ...

    def video(self, index: int, total: int, prompt: str) -> None: ...

    def step(self, done: int, total: int) -> None: ...

    def notice(self, kind: str, message: str) -> None: ...


class NoProgress:
    """A `SamplingProgress` that shows nothing (library callers that pass none)."""

    def status(self, message: str) -> None:
        pass

    def video(self, index: int, total: int, prompt: str) -> None:
        pass

    def step(self, done: int, total: int) -> None:
        pass

    def notice(self, kind: str, message: str) -> None:
        pass


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """diffusers' and transformers' own progress bars and log lines off during a run: the run
    reports progress itself, and their notes (e.g. DPMSolverSinglestep's final sigma with its
    default config) are not actionable here."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    pipeline_logger = logging.getLogger("osp_core.pipelines.t2v")
    previous_pipeline = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)  # truncation warnings go through `notice`
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(previous)
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        pipeline_logger.setLevel(previous_pipeline)
