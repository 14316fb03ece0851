"""Fixtures for the caption tests: generated clips (moving, panning, static, long, broken) and
the tiny vision-language model, each built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from osp_core.io import write_video

from .tiny_vlm import build_text_only_model, build_tiny_qwen2_vl

FPS = 8
SIZE = (48, 64)  # height, width


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random background (smooth so H.264 keeps it stable frame to frame)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    big = np.kron(coarse, np.ones((8, 8, 1), dtype=np.float32))
    return big.astype(np.uint8)


def static_clip(frames: int = 24, seed: int = 0) -> torch.Tensor:
    h, w = SIZE
    bg = _texture(h, w, seed)[:h, :w]
    return torch.from_numpy(np.repeat(bg[None], frames, axis=0))


def moving_square_clip(frames: int = 24, seed: int = 1) -> torch.Tensor:
    """A bright square crossing a static background, 2 px per frame."""
    h, w = SIZE
    video = static_clip(frames, seed).clone()
    for i in range(frames):
        x = (2 * i) % (w - 14)
        video[i, 16:30, x : x + 14] = torch.tensor([250, 250, 40], dtype=torch.uint8)
    return video


def panning_clip(frames: int = 24, seed: int = 2) -> torch.Tensor:
    """A camera pan: the background slides 2 px per frame."""
    h, w = SIZE
    bg = _texture(h, w + 2 * frames + 16, seed)[:h]
    return torch.from_numpy(np.stack([bg[:, 2 * i : 2 * i + w] for i in range(frames)]))


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory) -> Path:
    """moving.mp4, sub/pan.mp4, static.mp4 (24 frames each, 8 fps) and long.mp4 (40 moving frames)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "sub").mkdir()
    write_video(root / "moving.mp4", moving_square_clip(), fps=FPS)
    write_video(root / "sub" / "pan.mp4", panning_clip(), fps=FPS)
    write_video(root / "static.mp4", static_clip(), fps=FPS)
    write_video(root / "long.mp4", moving_square_clip(40, seed=3), fps=FPS)
    return root


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="session")
def text_only_model(tmp_path_factory) -> Path:
    return build_text_only_model(tmp_path_factory.mktemp("tiny-qwen2-text"))
