"""Lazy public names for a package's `__init__`: importing the package stays cheap (no torch)
until a name that needs a heavy module is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for `package`: `names` maps each public name to the
    module (relative to `package`) that defines it, imported on first use."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
