"""Per-sample random numbers that do not depend on how many ranks computed them.

A sample's draws (its timestep, noise, posterior sample, caption dropout) come from a generator
seeded by the run's seed, the sample's position in the global data stream (which fixes the step
and its place in the global batch) and what the draw is for, never from a per-rank stream: a run
on 1, 2 or 8 ranks with the same global batch draws the same numbers, and a resume needs no RNG
state to continue them.
"""

from __future__ import annotations

import hashlib

import torch


def batch_positions(batch: dict) -> list[int]:
    """The global positions of a batch's samples (the trainer adds them as `position`; a batch
    made by hand counts from 0)."""
    return list(batch.get("position", range(len(batch["key"]))))


def sample_generator(seed: int, position: int, purpose: str) -> torch.Generator:
    """A CPU generator for draw `purpose` of the sample at global `position` (CPU, so the numbers
    are the same on every device)."""
    digest = hashlib.sha256(f"{seed}:{position}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def sample_randn(seed: int, draws: list[tuple[int, str]], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(draws), *shape) standard normal draws, row i from draws[i] = (position, purpose)."""
    rows = [torch.randn(shape, generator=sample_generator(seed, position, purpose)) for position, purpose in draws]
    return torch.stack(rows).to(device)


def sample_rand(seed: int, positions: list[int], purpose: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """One uniform [0, 1) draw per sample."""
    return torch.stack([torch.rand((), generator=sample_generator(seed, p, purpose)) for p in positions]).to(device)
