"""On-disk face cache: one ``.npz`` entry per video plus a manifest of every input.

Layout under a cache root::

    <root>/entries/<video_key>.npz        finished video (status ``ok``)
    <root>/entries/<video_key>.fail.json  input that could not be used (status and error text)
    <root>/manifest.jsonl                 one JSON line per input, rebuilt from ``entries/``

An ``.npz`` entry holds the face crops as JPEG bytes (``jpeg`` concatenated, ``jpeg_offsets``
of length T+1), ``landmarks`` (T,68,2) float32 in crop pixels, ``frame_indices`` (T,) int64,
``scores`` (T,) float32 detection scores, ``boxes`` (T,4) float32 face boxes ``x0,y0,x1,y1`` in
source-frame pixels, and ``meta`` (a JSON string: key, path, label, dataset, method, split, size,
...). Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written entry that looks finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

ENTRY_SUFFIX = ".npz"
FAIL_SUFFIX = ".fail.json"
MANIFEST_NAME = "manifest.jsonl"
JPEG_QUALITY = 95

#: statuses a manifest line may carry
STATUSES = ("ok", "no_face", "unreadable", "empty", "error")


class CacheError(RuntimeError):
    """A cache root or entry that cannot be used (the message names the path and the fix)."""


@dataclass
class FaceEntry:
    """The aligned faces of one video."""

    key: str
    crops: np.ndarray  # (T, S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (T, 68, 2) float32, crop pixels
    frame_indices: np.ndarray  # (T,) int64, source frame numbers
    scores: np.ndarray  # (T,) float32 detection scores
    boxes: np.ndarray  # (T, 4) float32 x0, y0, x1, y1 in source pixels
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative POSIX key (no ``..``, no absolute path)."""
    if not key or "\\" in key or "\x00" in key:
        raise CacheError(f"invalid video key {key!r}")
    parts = PurePosixPath(key).parts
    if key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise CacheError(f"video key {key!r} escapes the cache root; keys are relative paths")
    return key


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def encode_jpeg(crop_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode one RGB uint8 crop as JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CacheError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: np.ndarray | bytes) -> np.ndarray:
    """Decode JPEG bytes into an RGB uint8 array."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    img = cv2.imdecode(arr, cv2.IMREAD_COLOR)
    if img is None:
        raise CacheError("corrupt JPEG in cache entry")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class FaceCache:
    """Reads and writes face entries under one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"

    # -- paths -------------------------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        return self.entries_dir / (validate_key(key) + ENTRY_SUFFIX)

    def failure_path(self, key: str) -> Path:
        return self.entries_dir / (validate_key(key) + FAIL_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    # -- state -------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        """True when ``key`` has a finished entry or a recorded failure."""
        return self.entry_path(key).exists() or self.failure_path(key).exists()

    def has_entry(self, key: str) -> bool:
        return self.entry_path(key).exists()

    # -- writing -----------------------------------------------------------------------------
    def write(self, entry: FaceEntry, quality: int = JPEG_QUALITY) -> Path:
        """Atomically store ``entry``; removes a stale failure record for the same key."""
        t = len(entry)
        if not (entry.crops.shape[0] == t == entry.frame_indices.shape[0]
                == entry.scores.shape[0] == entry.boxes.shape[0]):
            raise CacheError(f"entry {entry.key}: arrays disagree on the number of frames")
        blobs = [encode_jpeg(c, quality) for c in entry.crops]
        offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        meta = dict(entry.meta, key=entry.key, status="ok", num_faces=t,
                    size=int(entry.crops.shape[1]) if t else 0)
        arrays = dict(
            jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
            jpeg_offsets=offsets,
            landmarks=entry.landmarks.astype(np.float32),
            frame_indices=entry.frame_indices.astype(np.int64),
            scores=entry.scores.astype(np.float32),
            boxes=entry.boxes.astype(np.float32),
            meta=np.array(json.dumps(meta)),
        )
        path = self.entry_path(entry.key)
        _atomic_write_bytes(path, lambda h: np.savez(h, **arrays))
        fail = self.failure_path(entry.key)
        if fail.exists():
            fail.unlink()
        return path

    def write_failure(self, key: str, status: str, error: str, meta: dict | None = None) -> Path:
        """Atomically record that ``key`` could not be used, and why."""
        if status not in STATUSES or status == "ok":
            raise ValueError(f"failure status must be one of {STATUSES[1:]}, got {status!r}")
        record = dict(meta or {}, key=key, status=status, error=error)
        path = self.failure_path(key)
        data = json.dumps(record, sort_keys=True).encode()
        _atomic_write_bytes(path, lambda h: h.write(data))
        return path

    # -- reading -----------------------------------------------------------------------------
    def read_meta(self, key: str) -> dict:
        with self._open(key) as npz:
            return json.loads(str(npz["meta"]))

    def read(self, key: str, frames: Sequence[int] | None = None) -> FaceEntry:
        """Load an entry; ``frames`` selects positions 0..T-1 so that only those JPEGs decode."""
        with self._open(key) as npz:
            offsets = npz["jpeg_offsets"]
            total = len(offsets) - 1
            idx = np.arange(total) if frames is None else np.asarray(frames, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= total):
                raise CacheError(f"{self.entry_path(key)}: frame position out of range 0..{total - 1}")
            jpeg = npz["jpeg"]
            crops = [decode_jpeg(jpeg[offsets[i]:offsets[i + 1]]) for i in idx]
            size = json.loads(str(npz["meta"])).get("size", 0)
            return FaceEntry(
                key=key,
                crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
                landmarks=npz["landmarks"][idx],
                frame_indices=npz["frame_indices"][idx],
                scores=npz["scores"][idx],
                boxes=npz["boxes"][idx],
                meta=json.loads(str(npz["meta"])),
            )

    def _open(self, key: str):
        path = self.entry_path(key)
        if not path.exists():
            raise CacheError(f"no cache entry {path}; run `deepfakemae preprocess` first")
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:  # corrupt zip, truncated file
            raise CacheError(f"corrupt cache entry {path} ({exc}); delete it and rerun "
                             "`deepfakemae preprocess` to rebuild it") from exc

    # -- manifest ----------------------------------------------------------------------------
    def iter_records(self) -> Iterator[dict]:
        """Yield one manifest record per finished or failed entry found on disk."""
        if not self.entries_dir.exists():
            return
        for path in sorted(self.entries_dir.rglob("*")):
            if path.name.startswith(".tmp-") or not path.is_file():
                continue
            if path.name.endswith(FAIL_SUFFIX):
                yield json.loads(path.read_text())
            elif path.name.endswith(ENTRY_SUFFIX):
                key = path.relative_to(self.entries_dir).as_posix()[: -len(ENTRY_SUFFIX)]
                try:
                    yield self.read_meta(key)
                except CacheError as exc:
                    yield {"key": key, "status": "error", "error": str(exc)}

    def rebuild_manifest(self) -> Path:
        """Rewrite ``manifest.jsonl`` atomically from what ``entries/`` holds."""
        lines = [json.dumps(r, sort_keys=True) for r in self.iter_records()]
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        _atomic_write_bytes(self.manifest_path, lambda h: h.write(data))
        return self.manifest_path

    def manifest(self) -> list[dict]:
        """The manifest records; raises a clear error when the cache has none."""
        if not self.manifest_path.exists():
            if not self.root.exists():
                raise CacheError(f"face cache {self.root} does not exist; run "
                                 f"`deepfakemae preprocess --output {self.root}` first")
            self.rebuild_manifest()
        records = []
        for n, line in enumerate(self.manifest_path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CacheError(f"{self.manifest_path}:{n}: malformed JSON ({exc}); "
                                     "rerun `deepfakemae preprocess` to rebuild it") from exc
        return records
