"""Decode only the sampled frames of a video file (decord, PyAV fallback) or a frame folder.

``open_video(path)`` returns a :class:`FrameSource` with ``num_frames``, ``fps`` and
``read(indices) -> list of (H,W,3) uint8 RGB``. ``sample_indices(total, n)`` picks ``n``
uniformly spread, deterministic frame numbers. Anything that cannot be decoded raises
:class:`VideoError` with ``status`` ``"unreadable"`` or ``"empty"``.
"""

from __future__ import annotations

import itertools
import re
from abc import ABC, abstractmethod
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                  ".wmv", ".ts", ".3gp", ".ogv")

#: containers decord mis-indexes (checked against a full sequential PyAV decode)
DECORD_UNRELIABLE = ("mpeg", "mpegts")


class VideoError(RuntimeError):
    """An input that yields no frames; ``status`` is ``unreadable`` or ``empty``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


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


class PyAVSource(FrameSource):
    """PyAV fallback: seeks to a keyframe before a wanted frame and decodes forward.

    Frame numbers come from presentation timestamps relative to the first frame. Seeking in some
    containers (MPEG-PS) lands after the requested time, so a seek that overshoots is retried
    further back, down to decoding from the start.
    """

    def __init__(self, path: Path):
        import av

        self.path = path
        self._av = av
        self._container = None
        try:
            self.num_frames = self._probe()
            self._open()
        except (av.FFmpegError, UnicodeDecodeError, StopIteration) as exc:
            self.close()
            raise VideoError("unreadable", f"{path}: not a decodable video ({exc})") from exc

    def _probe(self) -> int:
        """Frame rate and count (from the header, else by counting packets without decoding)."""
        with self._av.open(str(self.path)) as container:
            if not container.streams.video:
                raise VideoError("unreadable", f"{self.path}: the file has no video stream")
            stream = container.streams.video[0]
            self._rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
            self._tb = Fraction(stream.time_base or Fraction(1, 90000))
            self.fps = float(self._rate)
            if stream.frames:
                return int(stream.frames)
            count = 0
            try:
                for packet in container.demux(stream):
                    count += packet.size > 0
            except self._av.FFmpegError:
                pass  # a truncated tail: count what could be demuxed
            return count

    def _open(self) -> None:
        """(Re)open and position the decoder on the first frame, whose pts is frame 0."""
        if self._container is not None:
            self._container.close()
        self._container = self._av.open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        frames = self._container.decode(self._stream)
        first = next(frames)
        self._origin = first.pts or 0
        self._frames = itertools.chain([first], frames)
        self._pos = -1  # index of the last frame taken from self._frames

    def _index_of(self, frame) -> int:
        if frame.pts is None:
            return self._pos + 1
        return int(round(float((frame.pts - self._origin) * self._tb * self._rate)))

    def _seek(self, index: int) -> None:
        """Position the decoder at or before ``index`` (never after it)."""
        back = 0
        while True:
            target = index - back
            if target <= 0:
                self._open()
                return
            pts = int(Fraction(target) / self._rate / self._tb) + self._origin
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
            frames = self._container.decode(self._stream)
            first = next(frames, None)
            if first is not None and self._index_of(first) <= index:
                self._frames = itertools.chain([first], frames)
                self._pos = -1
                return
            back = max(2 * back, int(self.fps) or 25)

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        wanted = sorted({int(i) for i in indices})
        found: dict[int, np.ndarray] = {}
        gap = max(int(self.fps), 12)  # seek only when the next frame is more than ~1 s ahead
        try:
            for index in wanted:
                if index <= self._pos or index - self._pos > gap:
                    self._seek(index)
                for frame in self._frames:
                    self._pos = self._index_of(frame)
                    if self._pos >= index:
                        found[index] = frame.to_ndarray(format="rgb24")
                        break
                else:
                    break  # the stream ended early
        except self._av.FFmpegError:
            pass  # corrupt data part-way: keep the frames decoded so far
        return [found[i] for i in (int(j) for j in indices) if i in found]

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


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


def open_video(path: str | Path, decord_threads: int = 1) -> FrameSource:
    """Open a video file or frame folder; raises :class:`VideoError` when nothing can be read."""
    path = Path(path)
    if path.is_dir():
        source = FolderSource(path)
        if source.num_frames == 0:
            raise VideoError("empty", f"{path}: folder holds no frame images {IMAGE_SUFFIXES}")
        return source
    if not path.is_file():
        raise VideoError("unreadable", f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise VideoError("empty", f"{path}: zero-byte file")
    container = sniff_container(path)
    if container is None or container in DECORD_UNRELIABLE:
        # decord can crash the process on data that is not a video, and on MPEG program
        # streams it drops the first GOP (frame numbers shift, the tail repeats): use PyAV
        return _checked(PyAVSource(path))
    try:
        return _checked(DecordSource(path, num_threads=decord_threads))
    except VideoError:
        raise
    except Exception:  # decord.DECORDError and friends: retry with PyAV
        return _checked(PyAVSource(path))


def _checked(source: FrameSource) -> FrameSource:
    if source.num_frames <= 0:
        source.close()
        raise VideoError("empty", f"{source.path}: the video has no frames")
    return source


def read_sampled(path: str | Path, n: int = 32, decord_threads: int = 1
                 ) -> tuple[list[np.ndarray], np.ndarray, int, float]:
    """Decode ``n`` uniformly sampled frames.

    Returns ``(frames list of (H,W,3) uint8 RGB, frame_indices (T,), num_frames_total, fps)``.
    Frames a decoder could not deliver are dropped (and their indices with them); when none
    decode at all a :class:`VideoError` with status ``unreadable`` is raised.
    """
    source = open_video(path, decord_threads=decord_threads)
    try:
        indices = sample_indices(source.num_frames, n)
        try:
            frames = source.read(indices)
            kept = indices if len(frames) == len(indices) else None
        except Exception:  # decord failing on a damaged stream: decode with PyAV instead
            frames, kept = [], None
        if kept is None and isinstance(source, DecordSource):
            fallback = PyAVSource(Path(path))
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
