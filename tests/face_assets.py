"""Small videos for the face-pipeline tests, written with PyAV from the GRID test clips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

GRID = Path(__file__).resolve().parents[1] / "deepfakemae" / "assets" / "grid"  # bundled clips
CLIPS = [GRID / "bbaf2n.mpg", GRID / "lbax4n.mpg", GRID / "swiz3n.mpg"]


def grid_frames(clip: Path = CLIPS[0], step: int = 1) -> list[np.ndarray]:
    """Every ``step``-th frame of a GRID clip, decoded sequentially, as (H,W,3) uint8 RGB."""
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return frames[::step]


def write_video(path: Path, frames: list[np.ndarray], gray: bool = False, fps: int = 25) -> Path:
    """Encode frames ((H,W,3) RGB, or (H,W) when ``gray``) to H.264 (or gray FFV1 for .mkv)."""
    with av.open(str(path), "w") as container:
        codec, pix = ("ffv1", "gray") if gray else ("libx264", "yuv420p")
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame, format="gray" if gray else "rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
