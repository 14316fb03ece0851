"""Point tracks from a video with OpenCV's pyramidal Lucas-Kanade (`--keep-motion`, and the
tracks `osp edit train` learns from outside the shapes world)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

MAX_POINTS = 16
WINDOW = 15  # LK window (pixels) at 64 px; scaled with the frame


def track_region(frames: torch.Tensor, mask: torch.Tensor, max_points: int = MAX_POINTS) -> list[torch.Tensor]:
    """Tracks (T, 2) in pixels (x, y) of corners inside `mask` (H, W) of frame 0, followed
    through uint8 `frames` (T, H, W, 3). A point lost by LK keeps its last position. Returns
    no track when the region has no corner to follow (a flat region has no visible motion)."""
    cv2 = _cv2()
    gray = [cv2.cvtColor(np.ascontiguousarray(f.numpy()), cv2.COLOR_RGB2GRAY) for f in frames]
    height, width = gray[0].shape
    region = (mask.numpy() > 0).astype(np.uint8) * 255
    spacing = max(2.0, min(height, width) / 32)
    points = cv2.goodFeaturesToTrack(gray[0], maxCorners=max_points, qualityLevel=0.05, minDistance=spacing, mask=region, blockSize=3)
    if points is None:
        return []
    window = max(7, int(WINDOW * min(height, width) / 64) | 1)
    params = {"winSize": (window, window), "maxLevel": 3, "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    current = points.astype(np.float32)
    path = [current[:, 0].copy()]
    for previous, nxt in zip(gray[:-1], gray[1:]):
        moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, nxt, current, None, **params)
        ok = status[:, 0] == 1
        current = np.where(ok[:, None, None], moved, current).astype(np.float32)
        current[..., 0] = current[..., 0].clip(0, width - 1)
        current[..., 1] = current[..., 1].clip(0, height - 1)
        path.append(current[:, 0].copy())
    stacked = torch.from_numpy(np.stack(path, axis=1))  # (K, T, 2)
    return list(stacked.float())


def _cv2():
    try:
        import cv2
    except ImportError:
        raise InputError("tracking motion needs OpenCV, which is not installed", "pip install opencv-python-headless, or pass --track / --track-file") from None
    return cv2
