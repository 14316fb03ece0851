"""How one sampling job spreads over the processes torchrun started: the mode, the device mesh,
the process group, and the transformer wrapped for it (torchtitan's parallelize step: the
model is built as for one device and wrapped from outside).

Modes: `data` (videos over ranks, each writes its own), `cfg` (the two guidance halves on two
ranks), `sp` (DSP over all ranks, `parallel.sequence`), `cfg+sp` (2 x world/2), `auto` (the
first that fits: data when there are at least as many videos as ranks, else cfg / cfg+sp
with guidance, else sp).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError, OSPError

PARALLEL_MODES = ("auto", "data", "cfg", "sp", "cfg+sp")
LAUNCH_HINT = "launch with torchrun --nproc_per_node N -m osp_cli t2v sample ..."


def launched_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks share a job: `data` x `cfg` x `sp` = `world_size` (one of them > 1, or all 1)."""

    mode: str  # none, data, cfg, sp or cfg+sp
    world_size: int = 1
    data: int = 1
    cfg: int = 1
    sp: int = 1

    @property
    def shares_videos(self) -> bool:
        """Whether ranks work on the same video (cfg and/or sp), rather than each on its own."""
        return self.cfg * self.sp > 1

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "world_size": self.world_size, "data": self.data, "cfg": self.cfg, "sp": self.sp}


SINGLE_PROCESS = ParallelLayout("none")


def resolve_parallel(requested: str | None, world_size: int, num_videos: int, guidance: float) -> ParallelLayout:
    """The layout for `requested` (None: auto under torchrun, none alone) on `world_size`
    processes; `InputError` in one line when the mode cannot apply."""
    if requested is not None and requested not in PARALLEL_MODES:
        raise InputError(f"unknown --parallel '{requested}'", f"use one of {', '.join(PARALLEL_MODES)}")
    if world_size == 1:
        if requested is not None:
            raise InputError(f"--parallel {requested} needs several processes, and this run has one", f"{LAUNCH_HINT}, or leave out --parallel")
        return SINGLE_PROCESS
    guided = guidance > 1.0
    mode = requested or "auto"
    if mode == "auto":
        if num_videos >= world_size:
            mode = "data"
        elif guided:
            mode = "cfg" if world_size == 2 else "cfg+sp" if world_size % 2 == 0 else "sp"
        else:
            mode = "sp"
    if mode == "data":
        if num_videos < world_size:
            raise InputError(
                f"--parallel data gives each process whole videos, and {num_videos} video(s) leave {world_size - num_videos} of {world_size} processes idle",
                "use --parallel sp (or cfg), or more prompts / --num-videos",
            )
        return ParallelLayout("data", world_size, data=world_size)
    if mode in ("cfg", "cfg+sp") and not guided:
        raise InputError(f"--parallel {mode} splits classifier-free guidance, and --guidance {guidance:g} turns it off", "use --parallel sp, or a --guidance above 1")
    if mode == "cfg":
        if world_size != 2:
            raise InputError(f"--parallel cfg runs the two guidance halves on 2 processes, and this run has {world_size}", "launch 2 processes, or use --parallel cfg+sp (an even number of processes) or sp")
        return ParallelLayout("cfg", world_size, cfg=2)
    if mode == "cfg+sp":
        if world_size % 2 or world_size < 4:
            raise InputError(f"--parallel cfg+sp needs an even number of processes >= 4 (2 guidance halves x sp), and this run has {world_size}", "launch 4, 6, 8 ... processes, or use --parallel sp")
        return ParallelLayout("cfg+sp", world_size, cfg=2, sp=world_size // 2)
    return ParallelLayout("sp", world_size, sp=world_size)


class PeerProcessFailed(OSPError):
    """This process stopped because another process of the job failed (that one reports why)."""

    quiet = True


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective that broke because a peer process went away (gloo reports
    a closed connection, NCCL an aborted communicator) rather than a failure of this process."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(sign in text for sign in ("closed by peer", "reset by peer", "communicator was aborted"))


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One accelerator per process: cuda / npu without an index become cuda:LOCAL_RANK."""
    if device.type in ("cuda", "npu") and device.index is None:
        return torch.device(device.type, local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Joins torchrun's process group on the backend for `device` (nccl, hccl or gloo) for the
    block, unless one is already joined (then it is left as it was)."""
    import torch.distributed as dist

    from ..device import distributed_backend

    if dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "npu":
        torch.npu.set_device(device)  # type: ignore[attr-defined]
    dist.init_process_group(distributed_backend(device))
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_mesh(layout: ParallelLayout, device: torch.device) -> Any:
    """The (cfg, sp) device mesh of a cfg / sp / cfg+sp layout, over the joined process group."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (layout.cfg, layout.sp), mesh_dim_names=("cfg", "sp"))


def parallelize_transformer(model: Any, mesh: Any) -> Any:
    """`model` (a LatteT2V) wrapped for `mesh`'s "sp" (DSP) and "cfg" (guidance halves)
    dimensions: a callable with `LatteT2V.forward`'s signature, the model itself unchanged."""
    from .guidance import GuidanceParallel
    from .sequence import SequenceParallelLatte

    runner = model
    names = mesh.mesh_dim_names or ()
    if "sp" in names and mesh["sp"].size() > 1:
        runner = SequenceParallelLatte(runner, mesh["sp"].get_group())
    if "cfg" in names and mesh["cfg"].size() > 1:
        runner = GuidanceParallel(runner, mesh["cfg"].get_group())
    return runner
