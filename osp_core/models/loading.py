"""Strict checkpoint loading on top of diffusers' `from_pretrained`.

diffusers warns and random-initialises weights a checkpoint lacks; for released checkpoints
that would silently produce noise, so a missing or mis-shaped tensor is an error here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelLoadError


class StrictLoadingMixin:
    """Mix in before `ModelMixin`: `from_pretrained` fails on missing or mis-shaped weights."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):
        want_info = kwargs.pop("output_loading_info", False)
        where = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if Path(pretrained_model_name_or_path).is_dir() and not (where / "config.json").is_file():
            raise ModelLoadError(f"no config.json in '{where}'", "point --model at a model folder (with config.json and safetensors weights)")
        from diffusers.utils import logging as diffusers_logging

        # diffusers' own warnings about missing weights would precede our one-line error
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {cls.__name__} from '{where}': {str(exc).splitlines()[0]}", "check that the folder holds a complete checkpoint") from exc
        finally:
            diffusers_logging.set_verbosity(verbosity)
        problems = []
        if info.get("missing_keys"):
            problems.append(f"missing {sorted(info['missing_keys'])[:5]}")
        if info.get("mismatched_keys"):
            problems.append(f"mis-shaped {[k for k, *_ in info['mismatched_keys']][:5]}")
        if problems:
            raise ModelLoadError(
                f"checkpoint in '{where}' does not fit {cls.__name__}: " + "; ".join(problems),
                "the weights belong to another model or config",
            )
        return (model, info) if want_info else model
