"""On-disk face cache: one ``.npz`` entry per video plus a manifest of every input.

Layout under a cache root::

    <root>/entries/<video_key>.npz        finished video (status ``ok``)
    <root>/entries/<video_key>.fail.json  input that could not be used (status and error text)
    <root>/manifest.jsonl                 one JSON line per input, rebuilt from ``entries/``
    <root>/cache.json                     the settings the entries were made with

An entry that cannot be read back in full (a flipped byte fails its zip CRC, an array has the
wrong shape or dtype, a JPEG does not decode) is *damaged*: reads raise
:class:`DamagedEntryError` naming the key and the file, the manifest lists it with status
``damaged``, and ``preprocess`` treats it as not done and rebuilds it.

An ``.npz`` entry holds the face crops as JPEG bytes (``jpeg`` concatenated, ``jpeg_offsets``
of length T+1), ``landmarks`` (T,68,2) float32 in crop pixels, ``frame_indices`` (T,) int64,
``scores`` (T,) float32 detection scores, ``boxes`` (T,4) float32 face boxes ``x0,y0,x1,y1`` in
source-frame pixels, and ``meta`` (a JSON string: key, path, label, dataset, method, split, size,
...). Every write goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written entry that looks finished; temporary files are named
``.tmp-<host>-<pid>-<random>`` so a later run can sweep those whose writer is gone. Files are
created with mode 0666 minus the umask, like any other file the user writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import TMP_PREFIX, atomic_write, is_stale_tmp
from deepfakemae.faces.ibug68 import NUM_POINTS

ENTRY_SUFFIX = ".npz"
FAIL_SUFFIX = ".fail.json"
MANIFEST_NAME = "manifest.jsonl"
JPEG_QUALITY = 95

SETTINGS_NAME = "cache.json"

#: statuses a manifest line may carry for an input (``damaged`` is not written, only found)
STATUSES = ("ok", "no_face", "unreadable", "empty", "error")
DAMAGED = "damaged"
#: arrays of an ``.npz`` entry: name -> (dtype kind, trailing shape after the frame axis)
ENTRY_ARRAYS = {
    "jpeg": ("u", None),
    "jpeg_offsets": ("i", None),
    "landmarks": ("f", (NUM_POINTS, 2)),
    "frame_indices": ("i", ()),
    "scores": ("f", ()),
    "boxes": ("f", (4,)),
    "meta": ("U", None),
}


class CacheError(DeepfakeMAEError, RuntimeError):
    """A cache root or entry that cannot be used (the message names the path and the fix)."""


class DamagedEntryError(CacheError):
    """An entry file that exists but cannot be read back in full (``key``, ``path``, ``reason``)."""

    def __init__(self, key: str, path: Path, reason: str):
        self.key, self.path, self.reason = key, Path(path), reason
        super().__init__(f"damaged cache entry {key!r} ({path}): {reason}; rerun "
                         "`deepfakemae preprocess` to rebuild it (or `deepfakemae cache verify "
                         f"{path.parent} --repair`)")


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


def check_arrays(arrays: dict[str, np.ndarray]) -> dict:
    """Check the arrays of one entry against the layout; return its ``meta`` dict.

    Raises ``ValueError`` naming the first array that is missing or has the wrong dtype or shape.
    """
    for name, (kind, _) in ENTRY_ARRAYS.items():
        if name not in arrays:
            raise ValueError(f"array {name!r} is missing")
        if arrays[name].dtype.kind != kind:
            raise ValueError(f"array {name!r} has dtype {arrays[name].dtype}, "
                             f"expected kind {kind!r}")
    t = arrays["landmarks"].shape[0] if arrays["landmarks"].ndim else -1
    for name, (_, trailing) in ENTRY_ARRAYS.items():
        if trailing is not None and arrays[name].shape != (t, *trailing):
            raise ValueError(f"array {name!r} has shape {arrays[name].shape}, "
                             f"expected {(t, *trailing)}")
    offsets, jpeg = arrays["jpeg_offsets"], arrays["jpeg"]
    if (offsets.shape != (t + 1,) or jpeg.ndim != 1 or offsets[0] != 0
            or offsets[-1] != jpeg.size or np.any(np.diff(offsets) <= 0)):
        raise ValueError(f"jpeg_offsets {offsets.shape} do not split the {jpeg.size} JPEG bytes "
                         f"into {t} images")
    meta = json.loads(str(arrays["meta"]))
    if not isinstance(meta, dict):
        raise ValueError("meta is not a JSON object")
    return meta


class FaceCache:
    """Reads and writes face entries under one root folder."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries_dir = self.root / "entries"

    # -- paths -------------------------------------------------------------------------------
    def entry_path(self, key: str) -> Path:
        """The ``.npz`` file of ``key``."""
        return self.entries_dir / (validate_key(key) + ENTRY_SUFFIX)

    def failure_path(self, key: str) -> Path:
        """The ``.fail.json`` file of ``key``."""
        return self.entries_dir / (validate_key(key) + FAIL_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_NAME

    # -- state -------------------------------------------------------------------------------
    def is_done(self, key: str) -> bool:
        """True when ``key`` has a finished entry or a recorded failure (existence only; see
        :meth:`check` for whether an entry reads back)."""
        return self.entry_path(key).exists() or self.failure_path(key).exists()

    def has_entry(self, key: str) -> bool:
        """True when ``key`` has an ``.npz`` entry (readable or not)."""
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
        atomic_write(path, lambda h: np.savez(h, **arrays))
        fail = self.failure_path(entry.key)
        if fail.exists():
            fail.unlink()
        return path

    def write_failure(self, key: str, status: str, error: str, meta: dict | None = None) -> Path:
        """Atomically record that ``key`` could not be used, and why; an older entry of the
        same key (damaged, or from an input that has since changed) is removed."""
        if status not in STATUSES or status == "ok":
            raise ValueError(f"failure status must be one of {STATUSES[1:]}, got {status!r}")
        record = dict(meta or {}, key=key, status=status, error=error)
        path = self.failure_path(key)
        data = json.dumps(record, sort_keys=True).encode()
        atomic_write(path, lambda h: h.write(data))
        self.entry_path(key).unlink(missing_ok=True)
        return path

    def remove(self, key: str) -> None:
        """Delete ``key``'s entry and failure record (so that the next run rebuilds it)."""
        self.entry_path(key).unlink(missing_ok=True)
        self.failure_path(key).unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def read_meta(self, key: str) -> dict:
        """The ``meta`` dict of ``key``'s entry (reads only that member)."""
        arrays = self._load(key, ("meta",))
        try:
            meta = json.loads(str(arrays["meta"]))
        except (ValueError, TypeError) as exc:
            raise DamagedEntryError(key, self.entry_path(key), f"meta is not JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise DamagedEntryError(key, self.entry_path(key), "meta is not a JSON object")
        return meta

    def read(self, key: str, frames: Sequence[int] | None = None) -> FaceEntry:
        """Load an entry; ``frames`` selects positions 0..T-1 so that only those JPEGs decode.

        Every array is read in full (the zip CRCs are checked) and checked against the layout;
        any damage raises :class:`DamagedEntryError`.
        """
        arrays, meta = self.check(key, decode=False)
        path = self.entry_path(key)
        offsets, jpeg = arrays["jpeg_offsets"], arrays["jpeg"]
        total = len(offsets) - 1
        idx = np.arange(total) if frames is None else np.asarray(frames, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= total):
            raise CacheError(f"{path}: frame position out of range 0..{total - 1}")
        try:
            crops = [decode_jpeg(jpeg[offsets[i]:offsets[i + 1]]) for i in idx]
        except CacheError as exc:
            raise DamagedEntryError(key, path, str(exc)) from exc
        size = meta.get("size", 0)
        return FaceEntry(
            key=key,
            crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
            landmarks=arrays["landmarks"][idx],
            frame_indices=arrays["frame_indices"][idx],
            scores=arrays["scores"][idx],
            boxes=arrays["boxes"][idx],
            meta=meta,
        )

    def check(self, key: str, decode: bool = True) -> tuple[dict[str, np.ndarray], dict]:
        """Read every array of ``key`` (zip CRCs), check shapes and dtypes and, with ``decode``,
        that every JPEG decodes; return ``(arrays, meta)`` or raise :class:`DamagedEntryError`."""
        arrays = self._load(key, tuple(ENTRY_ARRAYS))
        path = self.entry_path(key)
        try:
            meta = check_arrays(arrays)
        except ValueError as exc:
            raise DamagedEntryError(key, path, str(exc)) from exc
        if decode:
            offsets, jpeg = arrays["jpeg_offsets"], arrays["jpeg"]
            for i in range(len(offsets) - 1):
                try:
                    decode_jpeg(jpeg[offsets[i]:offsets[i + 1]])
                except CacheError as exc:
                    raise DamagedEntryError(key, path, f"JPEG {i} does not decode") from exc
        return arrays, meta

    def _load(self, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The arrays ``names`` of ``key``'s entry, read in full; damage of any kind (zip CRC,
        truncation, object arrays, missing members) raises :class:`DamagedEntryError`."""
        path = self.entry_path(key)
        if not path.exists():
            raise CacheError(f"no cache entry {path}; run `deepfakemae preprocess` first")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: npz[name] for name in names}
        except Exception as exc:  # BadZipFile (CRC), zlib.error, EOFError, ValueError (pickle)
            raise DamagedEntryError(key, path, f"{type(exc).__name__}: {exc}") from exc

    def read_failure(self, key: str) -> dict:
        """The record of ``key``'s ``.fail.json``; :class:`DamagedEntryError` when unreadable."""
        path = self.failure_path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DamagedEntryError(key, path, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DamagedEntryError(key, path, "not a JSON object")
        return record

    # -- listing -----------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every key with an entry or a failure record on disk (temporary files excluded)."""
        found = set()
        if self.entries_dir.exists():
            for path in self.entries_dir.rglob("*"):
                if path.name.startswith(TMP_PREFIX) or not path.is_file():
                    continue
                rel = path.relative_to(self.entries_dir).as_posix()
                for suffix in (FAIL_SUFFIX, ENTRY_SUFFIX):
                    if rel.endswith(suffix):
                        found.add(rel[: -len(suffix)])
                        break
        return sorted(found)

    def temp_files(self) -> list[Path]:
        """Temporary files (``.tmp-*``) under the cache root."""
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.rglob(TMP_PREFIX + "*") if p.is_file())

    def sweep_temp_files(self) -> list[Path]:
        """Delete the stale temporary files (see :func:`is_stale_tmp`); return them."""
        swept = []
        for path in self.temp_files():
            if is_stale_tmp(path):
                path.unlink(missing_ok=True)
                swept.append(path)
        return swept

    # -- manifest ----------------------------------------------------------------------------
    def record(self, key: str) -> dict:
        """The manifest record of ``key``: its entry's meta, its failure record, or a
        ``damaged`` record naming the file when either cannot be read."""
        try:
            if self.has_entry(key):
                return self.read_meta(key)
            return self.read_failure(key)
        except DamagedEntryError as exc:
            return {"key": key, "status": DAMAGED, "error": str(exc), "entry": str(exc.path)}

    def iter_records(self) -> Iterator[dict]:
        """Yield one manifest record per finished, failed or damaged entry found on disk."""
        for key in self.keys():
            yield self.record(key)

    def rebuild_manifest(self) -> Path:
        """Rewrite ``manifest.jsonl`` atomically from what ``entries/`` holds."""
        lines = [json.dumps(r, sort_keys=True) for r in self.iter_records()]
        data = ("\n".join(lines) + ("\n" if lines else "")).encode()
        atomic_write(self.manifest_path, lambda h: h.write(data))
        return self.manifest_path

    def manifest(self) -> list[dict]:
        """The manifest records; raises a clear error when the cache has none."""
        if not self.manifest_path.exists():
            if not self.root.exists():
                raise CacheError(f"face cache {self.root} does not exist; run "
                                 f"`deepfakemae preprocess --output {self.root}` first")
            self.rebuild_manifest()
        records = []
        for n, line in enumerate(self.manifest_path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CacheError(f"{self.manifest_path}:{n}: malformed JSON ({exc}); "
                                     "rerun `deepfakemae preprocess` to rebuild it") from exc
        return records

    # -- settings ----------------------------------------------------------------------------
    def read_settings(self) -> dict | None:
        """The record of ``cache.json``: ``None`` when there is none, ``{}`` when it is JSON
        but not an object; :class:`CacheError` naming the file when it is not JSON."""
        if not self.settings_path.exists():
            return None
        try:
            data = json.loads(self.settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.settings_path} is unreadable ({exc}); delete it and rerun "
                             "`deepfakemae preprocess` with the settings the cache was made "
                             "with") from exc
        return data if isinstance(data, dict) else {}  # not a settings record

    def write_settings(self, settings: dict) -> Path:
        """Record ``settings`` in ``cache.json`` (atomically)."""
        data = json.dumps(settings, indent=2, sort_keys=True).encode()
        atomic_write(self.settings_path, lambda h: h.write(data))
        return self.settings_path
