"""One base error for everything `osp` reports to a user, and its few subclasses.

Library code raises these with a message that names the problem and a hint that names the
fix; the CLI prints them as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class OSPError(Exception):
    """Base class of errors a user can act on."""

    exit_code: int = 1
    # True when another process of the same torchrun job reports this same error (the CLI
    # then exits with the code and prints nothing)
    quiet: bool = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(OSPError, ValueError):
    """A file, value or option given by the user is unusable."""

    exit_code = 2


class ModelLoadError(OSPError):
    """A model folder, config or checkpoint cannot be loaded."""

    exit_code = 3


class HubUnavailableError(ModelLoadError):
    """A model must come from the Hugging Face Hub and the Hub cannot be reached."""


class DeviceError(OSPError):
    """The requested device or dtype is not available here."""

    exit_code = 4


class InsufficientMemoryError(InputError):
    """The job, at the size asked for, does not fit the device's memory (the hint names a size
    that does)."""
