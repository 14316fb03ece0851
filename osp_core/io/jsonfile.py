"""Strict JSON for everything osp writes (files, sidecars, summaries, --json output).

Python's `json` writes NaN and Infinity as bare `NaN` / `Infinity`, which JSON does not have
and strict readers (browsers, jq, other languages) refuse. Here a non-finite float becomes
`null` (it carries no number) and the text is produced with `allow_nan=False`, so nothing
non-standard can slip through.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import atomic_path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def dumps(value: Any, *, indent: int | None = None, ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None) -> str:
    """`json.dumps` that always gives strict JSON: non-finite floats are written as null.
    `default` converts objects json cannot (after it, their floats are checked too)."""
    if default is not None:
        inner = default
        default = lambda obj: _finite(inner(obj))
    return json.dumps(_finite(value), indent=indent, ensure_ascii=ensure_ascii, default=default, allow_nan=False)


def write_json(path: str | Path, value: Any, *, indent: int | None = 2, ensure_ascii: bool = True, default: Callable[[Any], Any] | None = None) -> Path:
    """Write `value` as strict JSON (plus a final newline) to `path`, atomically (see `atomic_path`)."""
    path = Path(path)
    text = dumps(value, indent=indent, ensure_ascii=ensure_ascii, default=default) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
