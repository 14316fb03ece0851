"""The parallelize step of training (after torchtitan's `parallelize`): the model is built as for
one device, then wrapped from outside for the processes torchrun started.

- the layout (`osp_core.parallel.layout`): `world = data-parallel x sequence-parallel`;
  data-parallel ranks read different samples, the ranks of one sequence-parallel group share a
  sample's tokens (DSP, `osp_core.parallel.sequence`);
- FSDP2 (`fully_shard`) per transformer block and on the root, over a (replicate x shard) mesh
  of every rank, with a mixed-precision policy (bf16 parameters, fp32 gradient reduction) when
  the run trains in bf16;
- activation checkpointing of every k-th block and optional regional `torch.compile`, applied
  in place so parameter names (and so checkpoints) do not change.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..parallel.layout import TRAIN_STRATEGIES, ParallelLayout
from .wrapping import TrainingForward


def resolve_train_layout(parallel: Any, world_size: int, rank: int, mixed_precision: str = "no", local_rank: int = 0) -> ParallelLayout:
    """The layout of `parallel` (a `ParallelConfig`) on `world_size` processes, seen from
    `rank`: `world = data-parallel x sequence-parallel`, the mode its strategy; one-line
    `InputError` when it cannot apply (checked before any model is built)."""
    strategy, sp, replicate = parallel.strategy, parallel.sequence_parallel, parallel.replicate
    if strategy == "fsdp" and mixed_precision == "fp16":
        raise InputError("--mixed-precision fp16 is not supported with --strategy fsdp (it would need a sharded loss scaler)", "use --mixed-precision bf16 (bf16 parameters, fp32 gradient reduction) or no")
    if strategy not in TRAIN_STRATEGIES:
        raise InputError(f"--strategy '{strategy}' is not one of {', '.join(TRAIN_STRATEGIES)}", "pass --strategy ddp or --strategy fsdp")
    if world_size % sp:
        raise InputError(
            f"--sequence-parallel {sp} does not divide the {world_size} process(es) of this run",
            f"launch a multiple of {sp} processes (torchrun --nproc_per_node {sp * max(1, world_size // sp)}), or pick a divisor of {world_size}",
        )
    if replicate > 1 and (strategy != "fsdp" or world_size % replicate):
        raise InputError(
            f"parallel.replicate {replicate} needs --strategy fsdp and a process count it divides ({strategy}, {world_size} here)",
            "set parallel.replicate=1, or launch a multiple of it with --strategy fsdp",
        )
    return ParallelLayout(strategy, world_size, data=world_size // sp, sp=sp, replicate=replicate, rank=rank, local_rank=local_rank)


@dataclasses.dataclass
class TrainParallel:
    """The layout with its process groups: `fsdp_mesh` (replicate x shard, or shard) when sharded
    (`parallelize` wraps with FSDP2 exactly when there is one), `sp_group` when sequence parallel."""

    layout: ParallelLayout
    fsdp_mesh: Any = None
    sp_group: Any = None


def build_train_parallel(layout: ParallelLayout, device: torch.device) -> TrainParallel:
    """The layout's device meshes over the joined process group (none for one process)."""
    if layout.world_size == 1:
        return TrainParallel(layout)
    sp_group = layout.build_mesh(device.type)["sp"].get_group() if layout.sp > 1 else None
    fsdp_mesh = layout.build_fsdp_mesh(device.type) if layout.sharded else None
    return TrainParallel(layout, fsdp_mesh, sp_group)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of `model`: members of its ModuleLists whose class the model names in
    `_no_split_modules` (diffusers' flag for modules that must stay whole)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(child for child in module if type(child).__name__ in names)
    return blocks


def _checkpointed(block: nn.Module) -> None:
    """Recompute `block`'s activations in backward. Its `forward` is replaced on the instance, so
    parameter names stay those of the model (a wrapper module would rename them)."""
    from torch.utils.checkpoint import checkpoint

    original = block.forward
    block.forward = functools.partial(checkpoint, original, use_reentrant=False)  # type: ignore[method-assign]


def _sequence_parallel_forward(group: Any):
    from ..parallel.sequence import SequenceParallelLatte

    def step(inner: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return SequenceParallelLatte(inner, group)(*args, **kwargs)

    return step


def parallelize(model: nn.Module, parallel: TrainParallel, config: Any, mixed_precision: str = "no", gradient_checkpointing: bool = False) -> nn.Module:
    """`model` wrapped for training under `parallel` (`config` is the run's `ParallelConfig`).

    Returns the module to train and to hand the optimizer: the model itself, a
    `TrainingForward` around it for sequence parallel, FSDP2-sharded in place under fsdp.
    """
    # --gradient-checkpointing under ddp keeps the model's own (diffusers) switch, set by the trainer
    every = config.activation_checkpointing or (1 if gradient_checkpointing and parallel.layout.mode == "fsdp" else 0)
    blocks = transformer_blocks(model)
    for index, block in enumerate(blocks):
        if every and index % every == 0:
            _checkpointed(block)
        if config.compile:
            block.compile()  # regional: each block compiles once, in place (names unchanged)
    root: nn.Module = model
    if parallel.sp_group is not None:
        root = TrainingForward(model, _sequence_parallel_forward(parallel.sp_group))
    if parallel.fsdp_mesh is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision == "bf16" else MixedPrecisionPolicy()
        for block in blocks:
            fully_shard(block, mesh=parallel.fsdp_mesh, mp_policy=policy)
        fully_shard(root, mesh=parallel.fsdp_mesh, mp_policy=policy)
    return root


def check_shared_output(output_dir: Path, rank: int, world_size: int, group: Any = None) -> None:
    """Rank 0 and the last rank each write a probe file into `output_dir` and look for the other's:
    a folder that is not the same writable storage for both is one `InputError` on every rank,
    before training starts (a checkpoint written there could never be complete)."""
    import torch.distributed as dist

    if world_size == 1:
        return
    checkers = (0, world_size - 1)
    probe = output_dir / f".osp-probe-{os.getpid()}-{rank}"
    ok = 1.0
    if rank in checkers:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            probe.write_text(str(rank))
        except OSError:
            ok = 0.0
    # every rank learns the probes' names (process ids differ per rank)
    names: list[Any] = [None] * world_size
    dist.all_gather_object(names, probe.name if rank in checkers else None, group=group)
    if rank in checkers and ok:
        other = checkers[1] if rank == checkers[0] else checkers[0]
        ok = 1.0 if (output_dir / str(names[other])).is_file() else 0.0
    flag = torch.tensor([ok])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    dist.barrier(group=group)
    if rank in checkers:
        probe.unlink(missing_ok=True)
    if flag.item() < 1:
        raise InputError(
            f"the output folder '{output_dir}' is not writable storage shared by every rank (rank 0 and rank {world_size - 1} cannot see each other's files there)",
            "pass an --output on a file system every node mounts (e.g. NFS or Lustre), writable by all ranks",
        )
