"""Decode only the sampled frames of a video file (PyAV or decord) or a frame folder.

``open_video(path)`` returns a :class:`FrameSource` with ``num_frames``, ``fps`` and
``read(indices) -> list of (H,W,3) uint8 RGB``, upright: a stream's display rotation (phones
store portrait video as landscape pixels plus a 90-degree display matrix) is applied by every
decoder (PyAV here, decord by itself). ``sample_indices(total, n)`` picks ``n``
uniformly spread, deterministic frame numbers. Anything that cannot be decoded raises
:class:`VideoError` with ``status`` ``"unreadable"`` or ``"empty"``.
"""

from __future__ import annotations

import errno
import itertools
import os
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


def upright_rgb(frame) -> np.ndarray:
    """A PyAV video frame as (H,W,3) uint8 RGB with its display rotation applied.

    ``frame.rotation`` is the counterclockwise angle (degrees) of the stream's display matrix;
    it is rounded to a multiple of 90.
    """
    image = frame.to_ndarray(format="rgb24")
    turns = int(round((frame.rotation or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


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


#: demuxers whose packets carry a presentation timestamp each, so frames can be indexed from
#: the packets alone (MPEG-PS/TS and AVI often omit them: those decode sequentially)
INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm")


class PacketIndex:
    """Frame numbers, keyframes and decode order of a stream, read by demuxing (no decoding).

    Frame ``i`` is the packet with the ``i``-th smallest presentation timestamp, which is the
    ``i``-th frame a sequential decode outputs. ``decode_pos[i]`` is its position in decode
    (file) order; ``seek_pos[i]`` is the decode position of the keyframe to seek to for it: the
    latest keyframe at or before it in both decode and display order (an open GOP's leading
    B-frames need the previous one).
    """

    def __init__(self, pts: list[int], dts: list[int | None], key: list[bool]):
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")  # (N,) frame -> packet
        self.num_frames = len(pts)
        self.pts = [int(pts[i]) for i in order]  # (N,) by frame number
        self.frame_of_pts = {p: i for i, p in enumerate(self.pts)}
        self.decode_pos = order  # (N,) decode position of each frame
        self.seek_ts = [int(p) for p in pts]  # (N,) by decode position
        frame_of_packet = np.empty_like(order)
        frame_of_packet[order] = np.arange(self.num_frames)
        key_pos = np.flatnonzero(key)  # (K,) decode positions of the keyframes
        key_frame = frame_of_packet[key_pos]  # (K,) their frame numbers
        self.seek_pos = np.zeros(self.num_frames, np.int64)  # (N,)
        for i in range(self.num_frames):
            j = int(np.searchsorted(key_pos, order[i], side="right")) - 1
            while j > 0 and key_frame[j] > i:
                j -= 1
            self.seek_pos[i] = key_pos[max(j, 0)]

    @classmethod
    def build(cls, container, stream) -> PacketIndex | None:
        """Index ``stream`` by demuxing it; ``None`` when a packet lacks a timestamp, timestamps
        repeat, a packet is flagged corrupt/discard, or the stream does not open on a keyframe."""
        pts, dts, key = [], [], []
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            if packet.pts is None or packet.is_corrupt or packet.is_discard:
                return None
            pts.append(packet.pts)
            dts.append(packet.dts)
            key.append(bool(packet.is_keyframe))
        if not pts or not key[0] or len(set(pts)) != len(pts):
            return None
        return cls(pts, dts, key)


class PyAVSource(FrameSource):
    """PyAV decoding of only what the wanted frames need.

    MP4/MOV/Matroska streams are first indexed from their packets (:class:`PacketIndex`, no
    decoding). Reading then jumps to the keyframe before a wanted frame whenever that keyframe
    lies ahead of the decoder, and while decoding forward it drops the non-reference frames
    (B-frames nothing predicts from) that are not wanted -- ``skip_frame = NONREF`` per packet --
    and converts only the wanted frames to RGB. The frames it returns are bit-identical to those
    of a full sequential decode.

    Other containers (MPEG-PS/TS, AVI, ...) number frames by presentation timestamp relative to
    the first frame and decode forward, seeking when the next wanted frame is more than ~1 s
    ahead. Seeking in some of them (MPEG-PS) lands after the requested time, so a seek that
    overshoots is retried further back, down to decoding from the start.

    ``threads`` > 1 turns on FFmpeg frame+slice threading with that many threads.
    """

    def __init__(self, path: Path, threads: int = 1):
        import av

        self.path = path
        self.threads = max(1, int(threads))
        self._av = av
        self._container = None
        self._index: PacketIndex | None = None
        self.decoded = 0  # frames the decoder has output so far (all reads)
        try:
            self.num_frames = self._probe()
            self._open()
        except (av.FFmpegError, UnicodeDecodeError, StopIteration) as exc:
            self.close()
            raise VideoError("unreadable", f"{path}: not a decodable video ({exc})") from exc

    def _probe(self) -> int:
        """Frame rate, the packet index where the format allows, and the frame count."""
        with self._av.open(str(self.path)) as container:
            if not container.streams.video:
                raise VideoError("unreadable", f"{self.path}: the file has no video stream")
            stream = container.streams.video[0]
            self._rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
            self._tb = Fraction(stream.time_base or Fraction(1, 90000))
            self.fps = float(self._rate)
            formats = set(container.format.name.split(","))
            if formats & set(INDEXED_FORMATS):
                try:
                    self._index = PacketIndex.build(container, stream)
                except self._av.FFmpegError:
                    self._index = None  # a damaged file: decode sequentially instead
                if self._index is not None:
                    return self._index.num_frames
                container.seek(0, stream=stream)
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
        """(Re)open the file with the decoder at its start."""
        if self._container is not None:
            self._container.close()
        self._container = self._av.open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._codec = self._stream.codec_context
        self._codec.thread_count = self.threads
        if self.threads > 1:
            self._codec.thread_type = "AUTO"  # frame and slice threads
        if self._index is not None:
            self._packets = self._container.demux(self._stream)
            self._pos = -1  # decode position of the last packet fed to the decoder
            self._fed: set[int] = set()  # wanted frames fed to the decoder and not yet output
            self._landed = 0  # decode position of the keyframe decoding last restarted from
            self._drained = False
            return
        frames = self._container.decode(self._stream)
        first = next(frames)
        self._origin = first.pts or 0
        self._frames = itertools.chain([first], frames)
        self._pos = -1  # index of the last frame taken from self._frames

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        wanted = sorted({int(i) for i in indices if 0 <= int(i) < self.num_frames})
        try:
            found = self._read_indexed(wanted) if self._index is not None else \
                self._read_sequential(wanted)
        except self._av.FFmpegError:
            found = {}  # damaged before the first wanted frame: nothing decodable
        return [found[i] for i in (int(j) for j in indices) if i in found]

    # -- indexed containers ---------------------------------------------------------------------

    def _read_indexed(self, wanted: list[int]) -> dict[int, np.ndarray]:
        index = self._index
        remaining = set(wanted)
        found: dict[int, np.ndarray] = {}

        def take(frames) -> None:
            for frame in frames:
                self.decoded += 1
                i = index.frame_of_pts.get(frame.pts)
                self._fed.discard(i)
                if i in remaining:
                    found[i] = upright_rgb(frame)  # (H, W, 3) wanted frames only
                    remaining.discard(i)

        try:
            while remaining:
                target = min(remaining)
                key = int(index.seek_pos[target])
                behind = index.decode_pos[target] <= self._pos
                if target not in self._fed and (behind or key > max(self._pos + 1, self._landed)):
                    take(self._drain())  # frames still in flight, then jump
                    self._jump(key)
                    continue
                packet = next(self._packets, None)
                if packet is None or packet.size == 0:
                    take(self._drain())
                    break  # end of stream: what was not found is missing
                frame = index.frame_of_pts.get(packet.pts)
                if frame is not None:
                    self._pos = int(index.decode_pos[frame])
                    if frame in remaining:
                        self._fed.add(frame)  # will be output: no need to seek for it
                self._codec.skip_frame = "DEFAULT" if frame in remaining else "NONREF"
                take(self._codec.decode(packet))
        except self._av.FFmpegError:
            pass  # corrupt data part-way: keep the frames decoded so far
        finally:
            self._codec.skip_frame = "DEFAULT"
        return found

    def _drain(self) -> list:
        """The frames the decoder still holds (once: a drained decoder stays empty until reset)."""
        if self._drained:
            return []
        self._drained = True
        return self._codec.decode(None)

    def _jump(self, key: int) -> None:
        """Restart decoding at the keyframe at decode position ``key`` (from the start if the
        demuxer cannot land exactly there)."""
        index = self._index
        if key == 0:
            self._open()
            return
        self._container.seek(index.seek_ts[key], stream=self._stream, backward=True,
                             any_frame=False)
        self._codec.flush_buffers()
        self._packets = self._container.demux(self._stream)
        first = next(self._packets, None)
        frame = None if first is None else index.frame_of_pts.get(first.pts)
        if frame is None or index.decode_pos[frame] > key:
            self._open()  # overshot (or lost): decode from the start instead
            return
        self._packets = itertools.chain([first], self._packets)
        self._pos = int(index.decode_pos[frame]) - 1
        self._fed = set()
        self._landed = key  # may have landed before it: decode forward from there
        self._drained = False

    # -- other containers -----------------------------------------------------------------------

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

    def _read_sequential(self, wanted: list[int]) -> dict[int, np.ndarray]:
        found: dict[int, np.ndarray] = {}
        gap = max(int(self.fps), 12)  # seek only when the next frame is more than ~1 s ahead
        try:
            for index in wanted:
                if index <= self._pos or index - self._pos > gap:
                    self._seek(index)
                for frame in self._frames:
                    self.decoded += 1
                    self._pos = self._index_of(frame)
                    if self._pos >= index:
                        found[index] = upright_rgb(frame)
                        break
                else:
                    break  # the stream ended early
        except self._av.FFmpegError:
            pass  # corrupt data part-way: keep the frames decoded so far
        return found

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


BACKENDS = ("pyav", "decord")


def open_video(path: str | Path, threads: int = 1, backend: str = "decord") -> FrameSource:
    """Open a video file or frame folder; raises :class:`VideoError` when nothing can be read.

    ``backend="decord"`` uses decord's ``get_batch`` where decord is reliable (PyAV for MPEG
    PS/TS and on decord errors); ``backend="pyav"`` always uses :class:`PyAVSource`, which skips
    unwanted non-reference frames and is the faster one on H.264 with B-frames. ``threads`` is
    the decoder thread count.
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
    if backend == "pyav" or container is None or container in DECORD_UNRELIABLE:
        # decord can crash the process on data that is not a video, and on MPEG program
        # streams it drops the first GOP (frame numbers shift, the tail repeats): use PyAV
        return _checked(PyAVSource(path, threads=threads))
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


def read_sampled(path: str | Path, n: int = 32, threads: int = 1, backend: str = "decord"
                 ) -> tuple[list[np.ndarray], np.ndarray, int, float]:
    """Decode ``n`` uniformly sampled frames (``threads``, ``backend``: see :func:`open_video`).

    Returns ``(frames list of (H,W,3) uint8 RGB, frame_indices (T,), num_frames_total, fps)``.
    Frames a decoder could not deliver are dropped (and their indices with them); when none
    decode at all a :class:`VideoError` with status ``unreadable`` is raised.
    """
    source = open_video(path, threads=threads, backend=backend)
    try:
        indices = sample_indices(source.num_frames, n)
        try:
            frames = source.read(indices)
            kept = indices if len(frames) == len(indices) else None
        except Exception:  # decord failing on a damaged stream: decode with PyAV instead
            frames, kept = [], None
        if kept is None and isinstance(source, DecordSource):
            fallback = PyAVSource(Path(path), threads=threads)
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
