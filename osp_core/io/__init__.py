"""Video/image files and safe writes."""

from .atomic import atomic_dir, atomic_path, ensure_writable_dir
from .video import Video, from_model_output, parse_size, read_video, resize_center_crop, to_model_input, write_video

__all__ = [
    "Video",
    "atomic_dir",
    "atomic_path",
    "ensure_writable_dir",
    "from_model_output",
    "parse_size",
    "read_video",
    "resize_center_crop",
    "to_model_input",
    "write_video",
]
