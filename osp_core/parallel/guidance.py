"""Classifier-free guidance on two ranks: the unconditional half of the batch on rank 0 of the
group, the conditional half on rank 1, both predictions gathered on both.

The denoising loop stays the one in `pipelines.denoising`: it builds the doubled batch and
combines the halves as always; only the transformer call is split. Inference only (the gather
has no gradient).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..models.latte_t2v import LatteT2VOutput


class GuidanceParallel:
    """Wraps a transformer callable (LatteT2V, or a `SequenceParallelLatte`); called like
    `LatteT2V.forward` with the doubled guidance batch (unconditional half first)."""

    def __init__(self, model: Any, group: dist.ProcessGroup) -> None:
        if dist.get_world_size(group) != 2:
            raise ValueError(f"guidance parallelism needs a group of 2 ranks, got {dist.get_world_size(group)}")
        self.model = model
        self.group = group
        self.rank = dist.get_rank(group)

    def __call__(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> LatteT2VOutput | tuple[torch.Tensor]:
        if hidden_states.shape[0] % 2:
            raise ValueError(f"guidance parallelism needs an even batch (unconditional + conditional), got {hidden_states.shape[0]}")
        half = hidden_states.shape[0] // 2

        def mine(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None or (torch.is_tensor(tensor) and tensor.ndim == 0):
                return tensor
            return tensor.narrow(0, self.rank * half, half)

        out = self.model(mine(hidden_states), mine(timestep), mine(encoder_hidden_states), mine(encoder_attention_mask), return_dict=False, **kwargs)[0]
        out = out.contiguous()
        pieces = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(pieces, out, group=self.group)
        full = torch.cat(pieces)
        return LatteT2VOutput(sample=full) if return_dict else (full,)
