"""Cached face crops as model tensors: resizing with their landmarks, normalising, clip windows."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from deepfakemae.constants import IMAGENET_MEAN, IMAGENET_STD
from deepfakemae.faces.ibug68 import rescale_landmarks


def window_positions(num_frames: int, clip_len: int, windows: str) -> list[np.ndarray]:
    """Cached-frame positions (each (clip_len,)) of the windows of one video.

    ``windows="all"``: every start; ``"tile"``: starts 0, T, 2T, ... plus one last window ending
    at the last frame. Fewer than ``clip_len`` frames: one window padded with the last frame.
    """
    n, t = num_frames, clip_len
    if n < t:
        return [np.minimum(np.arange(t), n - 1)]  # pad by repeating the last frame
    if windows == "all":
        starts = list(range(n - t + 1))
    elif windows == "tile":
        starts = list(range(0, n - t + 1, t))
        if starts[-1] + t < n:
            starts.append(n - t)
    else:
        raise ValueError(f"windows must be 'all' or 'tile', got {windows!r}")
    return [np.arange(s, s + t) for s in starts]


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(T,H,W,3) uint8 RGB -> (T,3,H,W) float32, ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_faces(crops: np.ndarray, landmarks: np.ndarray, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Resize (T,S,S,3) crops to (T,size,size,3); landmarks scale about pixel centres."""
    s = crops.shape[1]
    if s == size and crops.shape[2] == size:
        return crops, landmarks
    interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(c, (size, size), interpolation=interp) for c in crops])
    scale = np.array([size / crops.shape[2], size / s], np.float32)
    return out, rescale_landmarks(landmarks, scale).astype(np.float32)
