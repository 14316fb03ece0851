from __future__ import annotations

import math

import torch

from osp_core.metrics import psnr, ssim


def test_identical_videos():
    x = torch.randint(0, 256, (3, 24, 24, 3), dtype=torch.uint8)
    assert psnr(x, x) == math.inf
    assert abs(ssim(x, x) - 1.0) < 1e-9


def test_known_psnr_and_ssim_ordering():
    x = torch.full((2, 16, 16, 3), 100, dtype=torch.uint8)
    y = x + 10  # MSE 100 -> 10*log10(255^2/100) = 28.13 dB
    assert abs(psnr(x, y) - 28.1308) < 1e-3
    torch.manual_seed(0)
    base = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    noise = lambda s: (base.float() + s * torch.randn(base.shape)).clamp(0, 255).to(torch.uint8)  # noqa: E731
    assert ssim(base, noise(5)) > ssim(base, noise(40)) > ssim(base, torch.zeros_like(base))
