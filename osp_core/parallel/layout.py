"""The one parallel layout of a job (after torchtitan's `ParallelDims`): how the processes
torchrun started share it, the device meshes over them, "is this the main process", and the one
owner of the process group. Sampling, training and captioning all use it.

Ranks are laid out data-parallel outermost, then the two classifier-free guidance halves, then
sequence parallel: `rank = (dp_rank x cfg + cfg_rank) x sp + sp_rank`.

No torch at import: the command line asks `is_main_process` before any model is loaded.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

TRAIN_STRATEGIES = ("ddp", "fsdp")


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch, or a plain process: the one that reports."""
    return launched_world()[0] == 0


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks share a job: `data` x `cfg` x `sp` = `world_size`.

    `mode` names the split: for sampling none, data, cfg, sp or cfg+sp; for training the
    strategy, ddp (whole model per rank) or fsdp (FSDP2 over every rank, in `replicate`
    groups). `rank` and `local_rank` are this process's.
    """

    mode: str  # none, data, cfg, sp, cfg+sp (sampling); ddp, fsdp (training)
    world_size: int = 1
    data: int = 1
    cfg: int = 1
    sp: int = 1
    replicate: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def launched(cls) -> ParallelLayout:
        """Data parallel over every process torchrun started, seen from this one: each rank
        takes its own share of the work (captioning)."""
        rank, world_size, local_rank = launched_world()
        return cls("data" if world_size > 1 else "none", world_size, data=world_size, rank=rank, local_rank=local_rank)

    @property
    def dp(self) -> int:
        """Data-parallel degree: groups of ranks that read different samples (or videos)."""
        return self.data

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.cfg * self.sp)

    @property
    def is_main(self) -> bool:
        """Whether this process reports and writes what is written once."""
        return self.rank == 0

    @property
    def shares_videos(self) -> bool:
        """Whether ranks work on the same video (cfg and/or sp), rather than each on its own."""
        return self.cfg * self.sp > 1

    @property
    def sharded(self) -> bool:
        """Whether FSDP2 wraps the model (fsdp on more than one process)."""
        return self.mode == "fsdp" and self.world_size > 1

    def to_dict(self) -> dict[str, Any]:
        """The layout as outputs record it: a sample's sidecar, or a training summary and checkpoint."""
        if self.mode in TRAIN_STRATEGIES:
            return {"strategy": self.mode, "world_size": self.world_size, "data_parallel": self.dp, "sequence_parallel": self.sp, "replicate": self.replicate}
        return {"mode": self.mode, "world_size": self.world_size, "data": self.data, "cfg": self.cfg, "sp": self.sp}

    def build_mesh(self, device_type: str) -> Any:
        """The (dp, cfg, sp) device mesh of every rank, over the joined process group."""
        return _init_mesh(device_type, (self.data, self.cfg, self.sp), ("dp", "cfg", "sp"))

    def build_fsdp_mesh(self, device_type: str) -> Any:
        """The mesh FSDP2 shards over: every rank (sequence-parallel ranks shard the weights
        too), as (replicate x shard) when the shards are replicated."""
        if self.replicate > 1:
            return _init_mesh(device_type, (self.replicate, self.world_size // self.replicate), ("replicate", "shard"))
        return _init_mesh(device_type, (self.world_size,), ("shard",))


def _init_mesh(device_type: str, shape: tuple[int, ...], names: tuple[str, ...]) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, shape, mesh_dim_names=names)


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One accelerator per process: cuda / npu without an index become cuda:LOCAL_RANK."""
    import torch

    if device.type in ("cuda", "npu") and device.index is None:
        return torch.device(device.type, local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device, timeout: timedelta | None = None) -> Iterator[None]:
    """Joins torchrun's process group on the backend for `device` (nccl, hccl or gloo) for the
    block, unless one is already joined (then it is left as it was). A library that leaves
    the group inside the block (Accelerate's `end_training`) is allowed to."""
    import torch
    import torch.distributed as dist

    from ..device import distributed_backend

    if dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)  # type: ignore[attr-defined]
    dist.init_process_group(distributed_backend(device), **({"timeout": timeout} if timeout is not None else {}))
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
