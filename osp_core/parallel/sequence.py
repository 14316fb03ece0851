"""DSP (Dynamic Sequence Parallel) for LatteT2V: one video's tokens spread over a process group.

Spatial blocks see all patches of a subset of the frames, temporal blocks all frames of a
subset of the patch positions; between them one all-to-all moves each token to the rank whose
subset holds it (Zhao et al., "DSP: Dynamic Sequence Parallelism for Multi-Dimensional
Transformers", 2024). Per layout switch a rank sends (world - 1) / world of its tokens once;
attention itself needs no communication, so results equal the unsharded model's up to float
rounding.

Frames and patch positions that do not divide by the ranks are split unevenly (the first
ranks take one more); a rank may hold none. Everything that depends on the whole video
(temporal positions, the images after the video frames, caption masks) is computed as the
unsharded model computes it: `embed` runs on the whole input and temporal blocks see every
frame.

The model stays unaware of process groups: `SequenceParallelLatte` wraps it from outside and
hands `LatteT2V.run_blocks` a frame shard of its inputs and a `DSPLayout`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from ..models.latte_t2v import LatteBlockInputs, LatteT2V, LatteT2VOutput


def shard_sizes(length: int, parts: int) -> list[int]:
    """`length` items over `parts` ranks: the first `length % parts` ranks take one more."""
    return [length // parts + (1 if rank < length % parts else 0) for rank in range(parts)]


def shard_bounds(length: int, parts: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank `rank`'s share of `length` items (`shard_sizes`)."""
    sizes = shard_sizes(length, parts)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


class _AllToAll(torch.autograd.Function):
    """all_to_all_single of a flat tensor with uneven splits; the gradient goes back the same way."""

    @staticmethod
    def forward(ctx: Any, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], group: dist.ProcessGroup) -> torch.Tensor:
        ctx.send_sizes, ctx.recv_sizes, ctx.group = send_sizes, recv_sizes, group
        recv = send.new_empty(sum(recv_sizes))
        dist.all_to_all_single(recv, send.contiguous(), recv_sizes, send_sizes, group=group)
        return recv

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        back = grad.new_empty(sum(ctx.send_sizes))
        dist.all_to_all_single(back, grad.contiguous(), ctx.send_sizes, ctx.recv_sizes, group=ctx.group)
        return back, None, None, None


class _GatherFrames(torch.autograd.Function):
    """Every rank's frames (B, C, F_r, h, w) joined along F on every rank. The backward keeps
    this rank's frames of the gradient: each rank computes the same loss on the same output."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: list[int], rank: int, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.bounds = (sum(sizes[:rank]), sum(sizes[: rank + 1]))
        # all_gather needs equal shapes: pad every shard to the largest, cut after
        longest = max(sizes)
        padded = local.new_zeros(*local.shape[:2], longest, *local.shape[3:])
        padded[:, :, : local.shape[2]] = local
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded, group=group)
        return torch.cat([piece[:, :, :size] for piece, size in zip(pieces, sizes)], dim=2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        start, end = ctx.bounds
        return grad[:, :, start:end], None, None, None


class DSPLayout:
    """`BlockLayout` over a process group: spatial items are (b, frame of this rank), temporal
    items (b, patch position of this rank); `to_temporal` / `to_spatial` are one all-to-all.

    `bytes_sent` counts what this rank sent to other ranks (benchmarks check it against the
    shapes).
    """

    def __init__(self, group: dist.ProcessGroup, total_frames: int, num_patches: int) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.total_frames, self.num_patches = total_frames, num_patches
        self.frame_sizes = shard_sizes(total_frames, self.world_size)
        self.patch_sizes = shard_sizes(num_patches, self.world_size)
        self.bytes_sent = 0

    def _exchange(self, chunks: Sequence[torch.Tensor], recv_numels: list[int]) -> list[torch.Tensor]:
        send_sizes = [chunk.numel() for chunk in chunks]
        send = torch.cat([chunk.reshape(-1) for chunk in chunks])
        self.bytes_sent += (sum(send_sizes) - send_sizes[self.rank]) * send.element_size()
        return list(_AllToAll.apply(send, send_sizes, recv_numels, self.group).split(recv_numels))

    def to_temporal(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*F_r, P, D) -> (B*P_r, F, D): send rank s the patch positions it owns."""
        dim = x.shape[-1]
        local = x.view(batch, self.frame_sizes[self.rank], self.num_patches, dim)
        chunks = local.split(self.patch_sizes, dim=2)  # (B, F_r, P_s, D) for rank s
        my_patches = self.patch_sizes[self.rank]
        received = self._exchange(chunks, [batch * frames * my_patches * dim for frames in self.frame_sizes])
        pieces = [piece.view(batch, frames, my_patches, dim) for piece, frames in zip(received, self.frame_sizes)]
        video = torch.cat(pieces, dim=1)  # (B, F, P_r, D)
        return video.transpose(1, 2).reshape(batch * my_patches, self.total_frames, dim)

    def to_spatial(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """(B*P_r, F, D) -> (B*F_r, P, D): send rank s the frames it owns."""
        dim = x.shape[-1]
        my_patches, my_frames = self.patch_sizes[self.rank], self.frame_sizes[self.rank]
        local = x.view(batch, my_patches, self.total_frames, dim).transpose(1, 2)  # (B, F, P_r, D)
        chunks = [chunk.contiguous() for chunk in local.split(self.frame_sizes, dim=1)]  # (B, F_s, P_r, D)
        received = self._exchange(chunks, [batch * my_frames * patches * dim for patches in self.patch_sizes])
        pieces = [piece.view(batch, my_frames, patches, dim) for piece, patches in zip(received, self.patch_sizes)]
        return torch.cat(pieces, dim=2).reshape(batch * my_frames, self.num_patches, dim)


def shard_block_inputs(inputs: LatteBlockInputs, frames: tuple[int, int], patches: tuple[int, int]) -> LatteBlockInputs:
    """This rank's part of `inputs`: per-frame fields cut to `frames` [start, end) of the
    F + n frames, the temporal modulation to `patches` [start, end) of the patch positions."""
    total = inputs.num_frames + inputs.use_image_num

    def frames_of(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return tensor.unflatten(0, (inputs.batch, total))[:, frames[0] : frames[1]].flatten(0, 1)

    modulation_temporal = inputs.modulation_temporal.unflatten(0, (inputs.batch, -1))[:, patches[0] : patches[1]].flatten(0, 1)
    return dataclasses.replace(
        inputs,
        hidden_states=frames_of(inputs.hidden_states),
        modulation_spatial=frames_of(inputs.modulation_spatial),
        # captions per video (no images) are shared by every frame: each shard keeps them whole
        captions=frames_of(inputs.captions) if inputs.use_image_num else inputs.captions,
        caption_bias=frames_of(inputs.caption_bias) if inputs.use_image_num else inputs.caption_bias,
        modulation_temporal=modulation_temporal,
    )


class SequenceParallelLatte:
    """A LatteT2V whose block stack runs DSP over `group`; called like `LatteT2V.forward`,
    every rank passes the same whole input and gets the same whole output.

    `layout` is the last call's `DSPLayout` (its `bytes_sent`, for benchmarks).
    """

    def __init__(self, model: LatteT2V, group: dist.ProcessGroup) -> None:
        self.model = model
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.layout: DSPLayout | None = None
        self.bytes_sent = 0  # over every call

    def __call__(self, *args: Any, return_dict: bool = True, **kwargs: Any) -> LatteT2VOutput | tuple[torch.Tensor]:
        """`LatteT2V.forward`'s arguments (hidden_states, timestep, encoder_hidden_states, ...)."""
        model = self.model
        # embedding the whole input on every rank costs one patch convolution and keeps what
        # depends on the whole video (caption per frame, image captions) the unsharded model's
        inputs = model.embed(*args, **kwargs)
        total_frames = inputs.num_frames + inputs.use_image_num
        num_patches = inputs.grid[0] * inputs.grid[1]
        frames = shard_bounds(total_frames, self.world_size, self.rank)
        patches = shard_bounds(num_patches, self.world_size, self.rank)
        shard = shard_block_inputs(inputs, frames, patches)
        self.layout = DSPLayout(self.group, total_frames, num_patches)
        x = model.run_blocks(shard, self.layout)
        self.bytes_sent += self.layout.bytes_sent
        # the output layer works per frame: run it on this rank's frames, gather the (smaller) result
        local = model.unpatchify(x, dataclasses.replace(shard, num_frames=frames[1] - frames[0], use_image_num=0))
        out = _GatherFrames.apply(local, self.layout.frame_sizes, self.rank, self.group)
        return LatteT2VOutput(sample=out) if return_dict else (out,)
