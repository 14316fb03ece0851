"""Captioning and clip filtering: `osp caption` (clips -> filters -> VLM captions -> annotations).

Names are imported on first use, so importing `osp_core.caption.defaults` (the CLI does) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr
from .defaults import DEFAULT_CAPTION_MODEL

# public name -> module that defines it
_LAZY = {
    "CaptionJob": ".runner",
    "CaptionSummary": ".runner",
    "run_caption": ".runner",
    "Captioner": ".captioner",
    "CaptionRequest": ".captioner",
    "FilterConfig": ".filters",
    "DROP_REASONS": ".filters",
    "is_english": ".language",
    "motion_score": ".motion",
    "PromptTemplate": ".templates",
    "load_template": ".templates",
}

if TYPE_CHECKING:  # pragma: no cover
    from .captioner import Captioner, CaptionRequest
    from .filters import DROP_REASONS, FilterConfig
    from .language import is_english
    from .motion import motion_score
    from .runner import CaptionJob, CaptionSummary, run_caption
    from .templates import PromptTemplate, load_template


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "DROP_REASONS",
    "CaptionJob",
    "CaptionRequest",
    "CaptionSummary",
    "Captioner",
    "FilterConfig",
    "PromptTemplate",
    "is_english",
    "load_template",
    "motion_score",
    "run_caption",
]
