"""The one parallel layout: rank arithmetic, the record outputs keep, the device mesh and the
one owner of the process group (sampling, training and captioning share them)."""

from __future__ import annotations

import pytest
import torch

from osp_core.parallel.launch import resolve_parallel
from osp_core.parallel.layout import ParallelLayout, is_main_process, launched_world, process_group
from osp_core.train.parallelize import resolve_train_layout

from tests.parallel.spawn import run_ranks


class _Parallel:
    def __init__(self, strategy: str = "ddp", sp: int = 1, replicate: int = 1) -> None:
        self.strategy, self.sequence_parallel, self.replicate = strategy, sp, replicate


def test_sampling_and_training_resolve_to_the_same_layout_class():
    sampling = resolve_parallel("cfg+sp", 4, 1, 7.5, rank=3, local_rank=1)
    training = resolve_train_layout(_Parallel("fsdp", sp=2), 4, 3, local_rank=1)
    assert type(sampling) is type(training) is ParallelLayout
    assert (sampling.data, sampling.cfg, sampling.sp, sampling.rank, sampling.local_rank) == (1, 2, 2, 3, 1)
    assert (training.dp, training.dp_rank, training.sp, training.sharded) == (2, 1, 2, True)
    assert not sampling.is_main and resolve_parallel(None, 2, 2, 7.5).is_main


def test_the_records_outputs_keep_are_unchanged():
    assert resolve_parallel("sp", 2, 1, 7.5, rank=1).to_dict() == {"mode": "sp", "world_size": 2, "data": 1, "cfg": 1, "sp": 2}
    assert resolve_train_layout(_Parallel("fsdp", sp=2, replicate=2), 4, 0).to_dict() == {
        "strategy": "fsdp", "world_size": 4, "data_parallel": 2, "sequence_parallel": 2, "replicate": 2,
    }  # fmt: skip


def test_is_main_process_reads_the_launcher(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_world() == (0, 1, 0) and is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


@pytest.fixture()
def one_rank_group(monkeypatch):
    from tests.parallel.spawn import _free_port

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")


def test_the_process_group_is_joined_for_the_block_and_a_library_may_leave_it(one_rank_group):
    """Accelerate's `end_training` destroys the group it found joined: leaving the block then is no error."""
    import torch.distributed as dist

    with process_group(torch.device("cpu")):
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        dist.destroy_process_group()
    assert not dist.is_initialized()
    with process_group(torch.device("cpu")):
        assert dist.is_initialized()
    assert not dist.is_initialized()


def test_a_joined_group_is_left_as_it_was(one_rank_group):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        with process_group(torch.device("cpu")):
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def _meshes(rank: int, world: int) -> dict:
    sampling = resolve_parallel("cfg", world, 1, 7.5, rank=rank)
    training = resolve_train_layout(_Parallel("fsdp", sp=2), world, rank)
    mesh = sampling.build_mesh("cpu")
    train_mesh = training.build_mesh("cpu")
    return {
        "names": mesh.mesh_dim_names,
        "cfg": mesh["cfg"].size(),
        "sp_ranks": torch.distributed.get_process_group_ranks(train_mesh["sp"].get_group()),
        "shard": training.build_fsdp_mesh("cpu").mesh_dim_names,
    }


def test_one_mesh_builder_for_sampling_and_training():
    for result in run_ranks(_meshes, 2):
        assert result == {"names": ("dp", "cfg", "sp"), "cfg": 2, "sp_ranks": [0, 1], "shard": ("shard",)}
