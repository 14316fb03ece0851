"""Pipelines compose models: text-to-video (T5 -> LatteT2V -> scheduler -> CausalVideoVAE)."""

from __future__ import annotations

import importlib

# heavy (diffusers/transformers) imports happen on first use
_LAZY = {
    "T2VPipeline": ".t2v",
    "T2VPipelineOutput": ".t2v",
    "PromptEmbeddings": ".t2v",
    "make_scheduler": ".t2v",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'osp_core.pipelines' has no attribute '{name}'")


__all__ = sorted(_LAZY)
