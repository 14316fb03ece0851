"""A thin module around a diffusers model for a training forward that differs from the model's
own `forward` (e.g. the VAE step needs the reconstruction *and* the posterior).

Distributed wrappers (DDP) only synchronise gradients of work done through their `forward`, so
the training computation must be a module forward; the diffusers model stays inside as `inner`
and is what checkpoints save and load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


class TrainingForward(nn.Module):
    """`forward(*args)` runs `step_fn(inner, *args)`."""

    def __init__(self, inner: nn.Module, step_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = inner
        self._step_fn = step_fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._step_fn(self.inner, *args, **kwargs)


def diffusers_part(module: nn.Module) -> tuple[nn.Module | None, str]:
    """(the diffusers model, its state-dict prefix) of an unwrapped module, or (None, '')."""
    from diffusers.models.modeling_utils import ModelMixin

    if isinstance(module, ModelMixin):
        return module, ""
    if isinstance(module, TrainingForward) and isinstance(module.inner, ModelMixin):
        return module.inner, "inner."
    return None, ""
