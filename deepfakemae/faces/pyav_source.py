"""PyAV decoding of only the frames asked for (:class:`PyAVSource`), from a packet index where
the container allows one."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np

from deepfakemae.faces.frame_source import FrameSource, VideoError


def upright_rgb(frame) -> np.ndarray:
    """A PyAV video frame as (H,W,3) uint8 RGB with its display rotation applied.

    ``frame.rotation`` is the counterclockwise angle (degrees) of the stream's display matrix;
    it is rounded to a multiple of 90.
    """
    image = frame.to_ndarray(format="rgb24")
    turns = int(round((frame.rotation or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


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

    def __init__(self, path: Path, threads: int = 1, stream: int = 0):
        import av

        self.path = path
        self.stream_index = stream  # which of the file's video streams (0: the first)
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
            # FFmpeg's reason without its repr of the file name (escapes under LC_ALL=C)
            reason = getattr(exc, "strerror", None) or exc
            raise VideoError("unreadable", f"{path}: not a decodable video ({reason})") from exc

    def _probe(self) -> int:
        """Frame rate, the packet index where the format allows, and the frame count."""
        with self._av.open(str(self.path)) as container:
            if not container.streams.video:
                raise VideoError("unreadable", f"{self.path}: the file has no video stream")
            if self.stream_index >= len(container.streams.video):
                raise VideoError("unreadable", f"{self.path}: no video stream "
                                 f"{self.stream_index} (it has {len(container.streams.video)})")
            stream = container.streams.video[self.stream_index]
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
        self._stream = self._container.streams.video[self.stream_index]
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
