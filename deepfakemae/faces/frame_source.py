"""What every frame decoder is: a :class:`FrameSource`, and the error of an undecodable input."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from deepfakemae.errors import DeepfakeMAEError


class VideoError(DeepfakeMAEError, RuntimeError):
    """An input that yields no frames; ``status`` is ``unreadable`` or ``empty``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class FrameSource(ABC):
    """Random access to the frames of one input."""

    path: Path
    num_frames: int
    fps: float

    @abstractmethod
    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        """Frames at ``indices`` (ascending) as (H,W,3) uint8 RGB arrays."""

    def close(self) -> None:  # noqa: B027 - sources without resources keep this no-op
        """Release decoder resources."""
