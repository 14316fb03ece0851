"""How one sampling job spreads over the processes torchrun started: the mode (a
`ParallelLayout`, whose mesh and process group `parallel.layout` owns) and the transformer wrapped for it (torchtitan's parallelize step: the
model is built as for one device and wrapped from outside).

Modes: `data` (videos over ranks, each writes its own), `cfg` (the two guidance halves on two
ranks), `sp` (DSP over all ranks, `parallel.sequence`), `cfg+sp` (2 x world/2), `auto` (the
first that fits: data when there are at least as many videos as ranks, else cfg / cfg+sp
with guidance, else sp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InputError, OSPError
from .layout import ParallelLayout

if TYPE_CHECKING:
    import torch


PARALLEL_MODES = ("auto", "data", "cfg", "sp", "cfg+sp")
LAUNCH_HINT = "launch with torchrun --nproc_per_node N -m osp_cli t2v sample ..."


SINGLE_PROCESS = ParallelLayout("none")


def resolve_parallel(requested: str | None, world_size: int, num_videos: int, guidance: float, rank: int = 0, local_rank: int = 0) -> ParallelLayout:
    """The layout for `requested` (None: auto under torchrun, none alone) on `world_size`
    processes, seen from `rank`; `InputError` in one line when the mode cannot apply."""
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
        return ParallelLayout("data", world_size, data=world_size, rank=rank, local_rank=local_rank)
    if mode in ("cfg", "cfg+sp") and not guided:
        raise InputError(f"--parallel {mode} splits classifier-free guidance, and --guidance {guidance:g} turns it off", "use --parallel sp, or a --guidance above 1")
    if mode == "cfg":
        if world_size != 2:
            raise InputError(f"--parallel cfg runs the two guidance halves on 2 processes, and this run has {world_size}", "launch 2 processes, or use --parallel cfg+sp (an even number of processes) or sp")
        return ParallelLayout("cfg", world_size, cfg=2, rank=rank, local_rank=local_rank)
    if mode == "cfg+sp":
        if world_size % 2 or world_size < 4:
            raise InputError(f"--parallel cfg+sp needs an even number of processes >= 4 (2 guidance halves x sp), and this run has {world_size}", "launch 4, 6, 8 ... processes, or use --parallel sp")
        return ParallelLayout("cfg+sp", world_size, cfg=2, sp=world_size // 2, rank=rank, local_rank=local_rank)
    return ParallelLayout("sp", world_size, sp=world_size, rank=rank, local_rank=local_rank)


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


def build_mesh(layout: ParallelLayout, device: torch.device) -> Any:
    """The device mesh of a cfg / sp / cfg+sp layout (`ParallelLayout.build_mesh`)."""
    return layout.build_mesh(device.type)


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
