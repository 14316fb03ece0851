"""Video/image files and safe writes."""

from .atomic import atomic_dir, atomic_path, ensure_writable_dir, remove_stale_temps, save_safetensors
from .jsonfile import dumps as json_dumps
from .jsonfile import write_json
from .video import Video, frames_suffix, from_model_output, parse_size, read_video, resize_center_crop, to_model_input, write_frames, write_image, write_video

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
    "write_video",
]
