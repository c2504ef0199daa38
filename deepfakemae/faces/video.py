"""Decode only the sampled frames of a video file (PyAV or decord) or a frame folder.

``open_video(path)`` returns a :class:`FrameSource` with ``num_frames``, ``fps`` and
``read(indices) -> list of (H,W,3) uint8 RGB``, upright: a stream's display rotation (phones
store portrait video as landscape pixels plus a 90-degree display matrix) is applied by every
decoder (PyAV in ``pyav_source``, decord by itself). ``sample_indices(total, n)`` picks ``n``
uniformly spread, deterministic frame numbers. Anything that cannot be decoded raises
:class:`VideoError` with ``status`` ``"unreadable"`` or ``"empty"``.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import cv2
import numpy as np

from deepfakemae.faces.frame_source import FrameSource, VideoError
from deepfakemae.faces.pyav_source import PyAVSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                  ".wmv", ".ts", ".3gp", ".ogv")

#: containers decord mis-indexes (checked against a full sequential PyAV decode)
DECORD_UNRELIABLE = ("mpeg", "mpegts")


def sample_indices(total: int, n: int = 32) -> np.ndarray:
    """``n`` frame numbers spread uniformly over ``0..total-1`` (all of them when fewer).

    Each pick is the centre of one of ``n`` equal segments, so the result is deterministic and
    never repeats a frame: ``(total,n)=(10,4) -> [1, 3, 6, 8]``.
    """
    if total <= 0:
        return np.zeros(0, np.int64)
    if n <= 0 or n >= total:
        return np.arange(total, dtype=np.int64)
    return ((np.arange(n) + 0.5) * total / n).astype(np.int64)


def sniff_container(path: Path) -> str | None:
    """Name the container from the file's first bytes, or ``None`` when none is recognised."""
    with open(path, "rb") as handle:
        head = handle.read(377)
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:3] == b"FLV":
        return "flv"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "asf"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpegts"
    return None


class DecordSource(FrameSource):
    """decord ``VideoReader``; ``get_batch`` seeks to keyframes and decodes only what it needs."""

    def __init__(self, path: Path, num_threads: int = 1):
        import decord

        self.path = path
        self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        batch = self._reader.get_batch([int(i) for i in indices]).asnumpy()  # (T, H, W, 3)
        return [_to_rgb(f) for f in batch]

    def close(self) -> None:
        del self._reader


class FolderSource(FrameSource):
    """A folder of frame images, ordered by the frame number in each file name."""

    def __init__(self, path: Path, fps: float = 0.0):
        self.path = path
        self.files = list_frame_images(path)
        self.num_frames = len(self.files)
        self.fps = fps

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        frames = []
        for i in indices:
            image = cv2.imread(str(self.files[int(i)]), cv2.IMREAD_COLOR)
            if image is not None:
                frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return frames


def _frame_number(path: Path) -> tuple:
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def list_frame_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by their (last) frame number."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=_frame_number)


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame[..., 0], cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(frame[..., :3])


BACKENDS = ("pyav", "decord")


def open_video(path: str | Path, threads: int = 1, backend: str = "decord", stream: int = 0
               ) -> FrameSource:
    """Open a video file or frame folder; raises :class:`VideoError` when nothing can be read.

    ``backend="decord"`` uses decord's ``get_batch`` where decord is reliable (PyAV for MPEG
    PS/TS and on decord errors); ``backend="pyav"`` always uses :class:`PyAVSource`, which skips
    unwanted non-reference frames and is the faster one on H.264 with B-frames. ``threads`` is
    the decoder thread count; ``stream`` picks a file's video stream (other than the first:
    PyAV).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    path = Path(path)
    if path.is_dir():
        source = FolderSource(path)
        if source.num_frames == 0:
            raise VideoError("empty", f"{path}: folder holds no frame images {IMAGE_SUFFIXES}")
        return source
    if not path.is_file():
        raise VideoError("unreadable", f"{path}: {_missing_reason(path)}")
    if path.stat().st_size == 0:
        raise VideoError("empty", f"{path}: zero-byte file")
    container = sniff_container(path)
    if backend == "pyav" or stream or container is None or container in DECORD_UNRELIABLE:
        # decord can crash the process on data that is not a video, and on MPEG program
        # streams it drops the first GOP (frame numbers shift, the tail repeats): use PyAV
        return _checked(PyAVSource(path, threads=threads, stream=stream))
    try:
        return _checked(DecordSource(path, num_threads=threads))
    except VideoError:
        raise
    except Exception:  # decord.DECORDError and friends: retry with PyAV
        return _checked(PyAVSource(path, threads=threads))


def _missing_reason(path: Path) -> str:
    """Why ``path`` is neither a file nor a folder: a dangling link, a link loop, or absent."""
    if not path.is_symlink():
        return "no such file or folder"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"dangling symbolic link to {os.readlink(path)} (the target does not exist)"
    return "symbolic link to something that is neither a file nor a folder"


def _checked(source: FrameSource) -> FrameSource:
    if source.num_frames <= 0:
        source.close()
        raise VideoError("empty", f"{source.path}: the video has no frames")
    return source


def count_video_streams(path: str | Path) -> int:
    """How many video streams a file holds (a frame folder, or a file PyAV cannot open: 1)."""
    import av

    if Path(path).is_dir():
        return 1
    try:
        with av.open(str(path)) as container:
            return max(1, len(container.streams.video))
    except (av.FFmpegError, UnicodeDecodeError, OSError):
        return 1


def read_sampled(path: str | Path, n: int = 32, threads: int = 1, backend: str = "decord",
                 stream: int = 0) -> tuple[list[np.ndarray], np.ndarray, int, float]:
    """Decode ``n`` uniformly sampled frames (``threads``, ``backend``, ``stream``: see
    :func:`open_video`).

    Returns ``(frames list of (H,W,3) uint8 RGB, frame_indices (T,), num_frames_total, fps)``.
    Frames a decoder could not deliver are dropped (and their indices with them); when none
    decode at all a :class:`VideoError` with status ``unreadable`` is raised.
    """
    source = open_video(path, threads=threads, backend=backend, stream=stream)
    try:
        indices = sample_indices(source.num_frames, n)
        try:
            frames = source.read(indices)
            kept = indices if len(frames) == len(indices) else None
        except Exception:  # decord failing on a damaged stream: decode with PyAV instead
            frames, kept = [], None
        if kept is None and isinstance(source, DecordSource):
            fallback = PyAVSource(Path(path), threads=threads, stream=stream)
            try:
                frames, kept = _read_with_indices(fallback, indices)
            finally:
                fallback.close()
        elif kept is None:
            frames, kept = _read_with_indices(source, indices)
        if not frames:
            raise VideoError("unreadable", f"{path}: no frame could be decoded")
        return [_to_rgb(f) for f in frames], kept, source.num_frames, source.fps
    finally:
        source.close()


def _read_with_indices(source: FrameSource, indices: np.ndarray
                       ) -> tuple[list[np.ndarray], np.ndarray]:
    """Read frame by frame so that each returned frame keeps its own index."""
    frames, kept = [], []
    for i in indices:
        got = source.read(np.array([i]))
        if got:
            frames.append(got[0])
            kept.append(int(i))
    return frames, np.asarray(kept, np.int64)
