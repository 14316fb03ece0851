"""Text the server sends to a client (the page, the API) never names the server's own files."""

from __future__ import annotations

import re
from pathlib import Path


def without_server_paths(text: str, output_dir: Path) -> str:
    """`text` with every path inside `output_dir` cut to its file name: the page names the
    user's file (an upload keeps its name under `.gradio/<hash>/`), never the server's layout."""
    inside = re.escape(str(output_dir).rstrip("/")) + r"/[^'\"\s]*"
    return re.sub(inside, lambda m: Path(m.group(0)).name, text)
