"""The one launcher of multi-process tests: `torchrun(ranks)` for a command as a user launches
it, `run_ranks(function, ranks)` for a function on CPU processes in one gloo group.

Tests that start several processes carry `@pytest.mark.distributed` (`pytest -m "not
distributed"` leaves them out); both launchers refuse to run in a test without the mark.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


CURRENT_TEST: pytest.Item | None = None  # set by conftest before each test's fixtures


def _require_mark() -> None:
    if CURRENT_TEST is not None and CURRENT_TEST.get_closest_marker("distributed") is None:
        raise AssertionError(f"{CURRENT_TEST.nodeid} starts several processes: mark it @pytest.mark.distributed")


def torchrun(ranks: int) -> list[str]:
    """The command prefix that runs `-m MODULE ARGS` on `ranks` CPU processes (torchrun, standalone)."""
    _require_mark()
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, queue: Any, function: Callable[..., Any], args: tuple) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.set_num_threads(1)  # tiny tensors on shared cores
        dist.init_process_group("gloo", rank=rank, world_size=world)
        queue.put((rank, function(rank, world, *args), None))
    except Exception:
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(function: Callable[..., Any], world: int, *args: Any, timeout: float = 300) -> list[Any]:
    """`function(rank, world, *args)` on `world` processes in one gloo group; the results by
    rank. Any rank's exception fails the caller with every rank's traceback."""
    _require_mark()
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(rank, world, port, queue, function, args)) for rank in range(world)]
    for process in processes:
        process.start()
    results = sorted((queue.get(timeout=timeout) for _ in processes), key=lambda item: item[0])
    for process in processes:
        process.join(timeout=60)
    errors = [error for _, _, error in results if error is not None]
    assert not errors, "\n".join(errors)
    return [result for _, result, _ in results]
