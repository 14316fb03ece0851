"""Fixtures for the training tests: generated clips, a tiny model repository, one CPU thread
(the tests run on shared cores; threads only add contention at these sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import tiny_model_repo, write_videos


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    """Data list over 4 readable clips (12 frames, 40x48) and one corrupt file."""
    return write_videos(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="session")
def one_clip(tmp_path_factory) -> Path:
    """Data list over a single clip: every batch is the same (for 'the loss goes down')."""
    return write_videos(tmp_path_factory.mktemp("one_clip"), count=1, broken=False)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return tiny_model_repo(tmp_path_factory.mktemp("repo"))
