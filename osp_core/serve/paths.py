"""Text the server sends to a client (the page, the API) never names the server's own files."""

from __future__ import annotations

import re
from pathlib import Path


def without_server_paths(text: str, *roots: Path | None) -> str:
    """`text` with every path inside one of `roots` (the output folder, --lora-dir; None is
    skipped) cut to its file name: the page names the user's file (an upload keeps its name
    under `.gradio/<hash>/`) and an adapter by its name, never the server's layout."""
    for root in roots:
        if root is not None:
            inside = re.escape(str(Path(root).absolute()).rstrip("/")) + r"/[^'\"\s]*"
            text = re.sub(inside, lambda m: Path(m.group(0)).name, text)
    return text
