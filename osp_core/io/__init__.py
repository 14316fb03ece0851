"""Video/image files and safe writes.

Names are imported on first use: `osp_core.io.paths` and the other light modules load without
torch (which `io.video` and `io.atomic.save_safetensors` need), so the CLI checks paths fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> module that defines it
_LAZY = {
    "atomic_dir": ".atomic",
    "atomic_path": ".atomic",
    "ensure_writable_dir": ".atomic",
    "remove_stale_temps": ".atomic",
    "save_safetensors": ".atomic",
    "json_dumps": ".jsonfile",
    "write_json": ".jsonfile",
    "frames_suffix": ".media",
    "Video": ".video",
    "from_model_output": ".video",
    "parse_size": ".media",
    "write_previews": ".previews",
    "read_video": ".video",
    "resize_center_crop": ".video",
    "to_model_input": ".video",
    "write_frames": ".video",
    "write_image": ".video",
    "write_video": ".video",
}
_RENAMED = {"json_dumps": "dumps"}  # exported under another name than its module's

if TYPE_CHECKING:  # pragma: no cover
    from .atomic import (
        atomic_dir,
        atomic_path,
        ensure_writable_dir,
        remove_stale_temps,
        save_safetensors,
    )
    from .jsonfile import dumps as json_dumps
    from .jsonfile import write_json
    from .media import frames_suffix, parse_size
    from .previews import write_previews
    from .video import (
        Video,
        from_model_output,
        read_video,
        resize_center_crop,
        to_model_input,
        write_frames,
        write_image,
        write_video,
    )


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), _RENAMED.get(name, name))
    raise AttributeError(f"module 'osp_core.io' has no attribute '{name}'")


__all__ = [
    "Video",
    "atomic_dir",
    "atomic_path",
    "ensure_writable_dir",
    "frames_suffix",
    "from_model_output",
    "json_dumps",
    "parse_size",
    "read_video",
    "remove_stale_temps",
    "resize_center_crop",
    "save_safetensors",
    "to_model_input",
    "write_frames",
    "write_image",
    "write_json",
    "write_previews",
    "write_video",
]
