"""EMA of a model trained with --strategy fsdp: the average is held like the weights, as DTensor
shards under FSDP2 (each rank averages its own shard, no communication), and gathered only to
write the consolidated `model_ema/` or to sample validation videos.

The decay schedule and update are those of diffusers' `EMAModel` (default settings), so a DDP
run and an FSDP run of the same data keep the same average.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (collective), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class ShardedEMA:
    """Exponential moving average of `model`'s trainable parameters, sharded as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.optimization_step = 0
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow: dict[str, torch.Tensor] = {name: params[name].detach().clone() for name in self.names}

    def get_decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - 1)
        if step <= 0:
            return 0.0
        return min((1 + step) / (10 + step), self.decay)

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.optimization_step += 1
        one_minus_decay = 1 - self.get_decay(self.optimization_step)
        params = dict(model.named_parameters())
        for name in self.names:
            shadow = self.shadow[name]
            shadow.sub_(one_minus_decay * (shadow - params[name].detach()))

    def to(self, device: torch.device | str) -> None:  # the shards already live where the weights do
        return None

    def full_weights(self, model_state: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
        """Every rank's call gathers the average (collective); returns `model_state` (a full model
        state dict, keys with `prefix`) with the averaged parameters in place, on the CPU."""
        out = dict(model_state)
        for name in self.names:
            full = _full(self.shadow[name]).detach().to("cpu")
            out[prefix + name] = full
        return out
