"""Clip filters, cheapest first: length, resolution and aspect ratio from metadata, then motion.

Each filter returns the reason a clip is dropped (counted by reason in the summary) or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InputError
from .clips import Clip
from .defaults import MIN_MOTION

# Reasons, in the order the filters run.
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LOW_RESOLUTION = "low_resolution"
ASPECT_RATIO = "aspect_ratio"
STATIC = "static"
DROP_REASONS = (TOO_SHORT, TOO_LONG, LOW_RESOLUTION, ASPECT_RATIO, STATIC)


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds; a clip outside any of them is dropped.

    Attributes:
        min_duration: shortest clip kept, seconds.
        max_duration: longest clip kept, seconds (None: no limit).
        min_height: smallest frame height kept, pixels.
        min_width: smallest frame width kept, pixels.
        min_aspect: smallest width/height kept (None: no limit).
        max_aspect: largest width/height kept (None: no limit).
        min_motion: smallest motion score kept (gray levels, see `motion.py`); 0 turns the
            motion filter off and skips computing the score.
    """

    min_duration: float = 0.0
    max_duration: float | None = None
    min_height: int = 0
    min_width: int = 0
    min_aspect: float | None = None
    max_aspect: float | None = None
    min_motion: float = MIN_MOTION

    def validate(self) -> None:
        for name in ("min_duration", "min_height", "min_width", "min_motion"):
            value = getattr(self, name)
            if value < 0 or not math.isfinite(value):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}", "pass 0 to turn the filter off")
        for name in ("max_duration", "min_aspect", "max_aspect"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0, got {value}", "leave it out to turn the limit off")
        if self.max_duration is not None and self.max_duration < self.min_duration:
            raise InputError(f"--max-duration {self.max_duration} is below --min-duration {self.min_duration}", "swap or widen the limits")
        if self.min_aspect is not None and self.max_aspect is not None and self.max_aspect < self.min_aspect:
            raise InputError(f"--max-aspect {self.max_aspect} is below --min-aspect {self.min_aspect}", "swap or widen the limits")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def metadata_drop_reason(clip: Clip, config: FilterConfig, clip_frames: int | None = None) -> str | None:
    """Why `clip` is dropped on its metadata alone (no decoding), or None to keep it."""
    if not clip.is_image:
        if clip_frames is not None and clip.num_frames < clip_frames:
            return TOO_SHORT
        if clip.duration < config.min_duration:
            return TOO_SHORT
        # One frame has no motion to measure: say so instead of calling it static.
        if config.min_motion > 0 and clip.num_frames < 2:
            return TOO_SHORT
        if config.max_duration is not None and clip.duration > config.max_duration:
            return TOO_LONG
    height, width = clip.info.height, clip.info.width
    if height < config.min_height or width < config.min_width:
        return LOW_RESOLUTION
    aspect = width / height
    if (config.min_aspect is not None and aspect < config.min_aspect) or (config.max_aspect is not None and aspect > config.max_aspect):
        return ASPECT_RATIO
    return None


def motion_drop_reason(score: float | None, config: FilterConfig) -> str | None:
    """`STATIC` when the motion score is below the threshold (None: the score was not computed)."""
    if score is not None and config.min_motion > 0 and score < config.min_motion:
        return STATIC
    return None
