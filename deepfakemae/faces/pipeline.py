"""One video -> aligned faces (:class:`FacePipeline`), and many videos -> a face cache
(:func:`run_preprocess`: resume, shards, worker processes, progress bar, summary)."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from deepfakemae.faces.align import (
    DEFAULT_MARGIN,
    align_face,
    dlib_box_from_points,
    level_eyes,
    transform_points,
)
from deepfakemae.faces.cache import (
    JPEG_QUALITY,
    CacheError,
    DamagedEntryError,
    FaceCache,
    FaceEntry,
    validate_key,
)
from deepfakemae.faces.detect import Detection, FaceDetector
from deepfakemae.faces.ibug68 import five_points
from deepfakemae.faces.landmarks import build_landmarks
from deepfakemae.faces.video import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    VideoError,
    list_frame_images,
    read_sampled,
    sample_indices,
)
from deepfakemae.records import VideoRecord


class FaceError(RuntimeError):
    """A video that yields no usable face; ``status`` is a cache failure status."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class FaceConfig:
    """Settings of the face pipeline (every field is a ``deepfakemae preprocess`` option)."""

    frames: int = 32  # frames sampled uniformly per video
    size: int = 224  # side of the square aligned crop
    landmarks: str = "dlib"  # dlib | fan
    device: str = "cpu"  # torch device of the FAN backend
    detect_max_side: int = 640  # frames are downscaled to this longest side for detection
    detector: str = "dlib+mtcnn"  # dlib+mtcnn (MTCNN when dlib finds nothing) | dlib | mtcnn
    track: bool = True  # search near the previous frame's face before the whole frame
    margin: float = DEFAULT_MARGIN  # background around the face, fraction of the crop side
    jpeg_quality: int = JPEG_QUALITY
    decoder: str = "pyav"  # pyav (skips unwanted non-reference frames) | decord
    decode_threads: int = 0  # decoder threads per process; 0: the CPUs divided among workers


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_threads_for(config: FaceConfig, workers: int = 1) -> int:
    """Decoder threads per process: ``config.decode_threads``, or when 0 the available CPUs
    divided among ``workers`` processes (at least 1), so workers x threads fits the machine."""
    if config.decode_threads > 0:
        return config.decode_threads
    return max(1, available_cpus() // max(1, workers))


#: largest mean distance (inter-ocular distances) between the 68-point predictor's five points
#: and MTCNN's for the landmarks to be kept (agreeing faces measure 0.03-0.06)
MAX_POINT_ERROR = 0.25


class FacePipeline:
    """Detects, landmarks and aligns the sampled frames of one video (models load once)."""

    def __init__(self, config: FaceConfig | None = None):
        self.config = config or FaceConfig()
        self.detector = FaceDetector(max_side=self.config.detect_max_side, track=self.config.track,
                                     backend=self.config.detector)
        self.landmarks = build_landmarks(self.config.landmarks, self.config.device)

    def face_landmarks(self, frame: np.ndarray, found: Detection) -> np.ndarray | None:
        """(68,2) landmarks in ``frame`` pixels of the face ``found``; ``None`` when the
        predictor disagrees with MTCNN's five points (the frame is then dropped).

        An MTCNN face is turned upright by its eye points and given the box dlib's detector
        would give it, which is what the 68-point predictor is trained on."""
        if found.points is None:
            return self.landmarks(frame, found.box[None])[0]
        mat = level_eyes(found.points)
        upright = cv2.warpAffine(frame, mat, (frame.shape[1], frame.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        box = dlib_box_from_points(transform_points(found.points, mat))
        marks = transform_points(self.landmarks(upright, box[None])[0],
                                 cv2.invertAffineTransform(mat))
        iod = max(float(np.linalg.norm(found.points[1] - found.points[0])), 1.0)
        error = np.linalg.norm(five_points(marks) - found.points, axis=1).mean() / iod
        return marks.astype(np.float32) if error <= MAX_POINT_ERROR else None

    def process(self, record: VideoRecord) -> FaceEntry:
        """Aligned faces of ``record``; raises :class:`FaceError` when there are none."""
        cfg = self.config
        try:
            frames, indices, total, fps = read_sampled(record.path, cfg.frames,
                                                       decode_threads_for(cfg), cfg.decoder)
        except VideoError as exc:
            raise FaceError(exc.status, str(exc)) from exc
        crops, marks, kept, scores, boxes, sources = [], [], [], [], [], []
        previous = None
        for frame, index in zip(frames, indices, strict=True):
            found = self.detector(frame, previous)
            lm = None if found is None else self.face_landmarks(frame, found)  # (68, 2) px
            if lm is None:
                continue  # frames without a usable face are dropped from the entry
            crop, lm_crop = align_face(frame, lm, cfg.size, cfg.margin)
            crops.append(crop)
            marks.append(lm_crop)
            kept.append(int(index))
            scores.append(found.score)
            boxes.append(found.box)
            sources.append(found.source)
            previous = found.box
        if not crops:
            raise FaceError("no_face", f"{record.path}: no face found in {len(frames)} "
                                       "sampled frames")
        meta = dict(record.as_meta(), num_frames_total=int(total), fps=float(fps),
                    landmarks=self.landmarks.name, size=cfg.size, frames_sampled=len(indices),
                    detectors=sources)
        wanted = len(sample_indices(int(total), cfg.frames))
        if len(indices) < wanted:  # the container promised more frames than decode
            meta["warning"] = (f"only {len(indices)} of {wanted} sampled frames decoded "
                               f"({total} frames announced): truncated or damaged file?")
        return FaceEntry(
            key=record.key,
            crops=np.stack(crops),  # (T, S, S, 3)
            landmarks=np.stack(marks).astype(np.float32),  # (T, 68, 2)
            frame_indices=np.asarray(kept, np.int64),  # (T,)
            scores=np.asarray(scores, np.float32),  # (T,)
            boxes=np.stack(boxes).astype(np.float32),  # (T, 4)
            meta=meta,
        )


# -- many videos -------------------------------------------------------------------------------

#: failure statuses retried by default: their cause (a bug, memory, I/O) may have gone away
TRANSIENT_STATUSES = ("error",)


@dataclass
class PreprocessSummary:
    """What one :func:`run_preprocess` call did; every input of the shard is counted once:
    ``total == ok + already_ok + num_failed + num_already_failed``."""

    total: int = 0  # inputs in this shard
    skipped: int = 0  # already in the cache (resume): already_ok + recorded failures kept
    ok: int = 0  # processed in this run and stored
    failed: dict[str, int] = field(default_factory=dict)  # status -> count, this run
    already_ok: int = 0  # finished entries found intact
    already_failed: dict[str, int] = field(default_factory=dict)  # recorded failures kept
    damaged: list[str] = field(default_factory=list)  # "key: why" of entries found damaged
    retried: int = 0  # recorded failures processed again
    swept: int = 0  # stale temporary files removed at the start
    faces: int = 0  # aligned faces written
    frames: int = 0  # frames sampled from the processed videos
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first worker was ready (spawn, imports, models)
    errors: list[str] = field(default_factory=list)  # "key: status: message"
    warnings: list[str] = field(default_factory=list)  # "key: message" (stored, but suspect)

    @property
    def num_failed(self) -> int:
        """Inputs that failed in this run."""
        return sum(self.failed.values())

    @property
    def num_already_failed(self) -> int:
        """Inputs whose recorded failure was kept (not retried)."""
        return sum(self.already_failed.values())

    @property
    def num_unusable(self) -> int:
        """Inputs of this shard the cache holds no faces for (this run's and recorded failures)."""
        return self.num_failed + self.num_already_failed

    def as_dict(self) -> dict:
        return dict(asdict(self), num_failed=self.num_failed, num_unusable=self.num_unusable)

    def format(self) -> str:
        """A human-readable multi-line summary; the first line accounts for every input."""
        rate = self.faces / self.seconds if self.seconds > 0 else 0.0
        statuses = Counter(self.failed) + Counter(self.already_failed)
        detail = ", ".join(f"{s} {n}" for s, n in sorted(statuses.items()))
        lines = [f"inputs {self.total}: ok {self.ok + self.already_ok}, failed "
                 f"{self.num_unusable}" + (f" ({detail})" if detail else "")
                 + f"; this run: processed {self.total - self.skipped}, already done "
                 f"{self.skipped}, damaged {len(self.damaged)} (rebuilt), retried {self.retried}, "
                 f"warnings {len(self.warnings)}",
                 f"{self.faces} faces from {self.frames} frames in {self.seconds:.1f} s "
                 f"({rate:.1f} faces/s, start-up {self.startup_seconds:.1f} s)"]
        lines += [f"  {status}: {n}" for status, n in sorted(self.failed.items())]
        if self.already_failed:
            lines.append(f"  recorded failures kept ({self.num_already_failed}); "
                         "rerun with --retry-failed to process them again")
        if self.swept:
            lines.append(f"  removed {self.swept} stale temporary file(s) of an interrupted run")
        for title, items in (("", self.errors), ("rebuilt: ", self.damaged),
                             ("warning: ", self.warnings)):
            lines += [f"  {title}{e}" for e in items[:20]]
            if len(items) > 20:
                lines.append(f"  ... and {len(items) - 20} more (see manifest.jsonl)")
        return "\n".join(lines)


def duplicate_keys(records: Iterable[VideoRecord]) -> dict[str, list[str]]:
    """Keys shared by several records -> the paths that share them."""
    paths: dict[str, list[str]] = {}
    for r in records:
        paths.setdefault(r.key, []).append(r.path)
    return {k: sorted(v) for k, v in sorted(paths.items()) if len(v) > 1}


def describe_duplicates(dups: dict[str, list[str]]) -> str:
    """An error message naming the inputs that share a key."""
    shown = "; ".join(f"{k!r} <- {', '.join(v)}" for k, v in list(dups.items())[:5])
    more = f" (and {len(dups) - 5} more keys)" if len(dups) > 5 else ""
    return (f"{len(dups)} video key(s) shared by several inputs: {shown}{more}; keys are paths "
            "without suffix, so rename or remove one input of each")


def shard_records(records: Iterable[VideoRecord], shard: tuple[int, int] = (0, 1)
                  ) -> list[VideoRecord]:
    """Records of shard ``i`` of ``n``: the ``i``-th of every ``n`` in sorted-key order.

    The shards of ``0..n-1`` are disjoint and together cover every record.
    """
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    ordered = sorted(records, key=lambda r: r.key)
    dups = duplicate_keys(ordered)
    if dups:
        raise ValueError(describe_duplicates(dups))
    return ordered[index::count]


def input_signature(path: str | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns]`` of an input (a folder: ``[number of files, mtime_ns]``), ``None``
    when it cannot be stat'ed; a recorded failure is retried when this changes."""
    try:
        st = os.stat(path)
        size = len(os.listdir(path)) if Path(path).is_dir() else st.st_size
    except OSError:
        return None
    return [int(size), int(st.st_mtime_ns)]


def detector_setting(config: FaceConfig) -> str:
    """The detector as ``cache.json`` records it (dlib alone keeps its earlier wording)."""
    name = {"dlib": "dlib-hog", "dlib+mtcnn": "dlib-hog+mtcnn", "mtcnn": "mtcnn"}[config.detector]
    return f"{name} max_side={config.detect_max_side} track={config.track}"


def cache_settings(config: FaceConfig) -> dict:
    """The settings that shape a cache's entries (recorded in ``cache.json``)."""
    return {"frames": config.frames, "size": config.size, "landmarks": config.landmarks,
            "margin": round(float(config.margin), 6),
            "detector": detector_setting(config),
            "jpeg_quality": config.jpeg_quality}


class SettingsMismatch(CacheError):
    """A run whose settings differ from those the cache was made with."""


def check_settings(cache: FaceCache, config: FaceConfig, allow_mixed: bool = False) -> None:
    """Record this run's settings in ``cache.json``; refuse settings that differ from the
    recorded ones unless ``allow_mixed`` (then the new settings are added to the record)."""
    wanted = cache_settings(config)
    recorded = cache.read_settings()
    if recorded is None or "settings" not in recorded:
        cache.write_settings({"settings": wanted, "mixed": []})
        return
    first = recorded["settings"]
    if first == wanted or wanted in recorded.get("mixed", []):
        return
    diff = ", ".join(f"{k} {first.get(k)!r} (cache) vs {wanted.get(k)!r} (this run)"
                     for k in sorted(set(first) | set(wanted)) if first.get(k) != wanted.get(k))
    if not allow_mixed:
        raise SettingsMismatch(
            f"face cache {cache.root} was made with other settings: {diff}; use another "
            "--output, rerun with the recorded settings, or pass --allow-mixed-settings to add "
            f"these to the same cache (recorded in {cache.settings_path})")
    cache.write_settings(dict(recorded, mixed=[*recorded.get("mixed", []), wanted]))


_WORKER: dict = {}


def _exit_with_parent() -> None:
    """In a pool worker: exit quietly as soon as the parent process is gone (``kill -9``), not
    later with a ``BrokenPipeError`` traceback."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp_connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(config: FaceConfig, output: str) -> None:
    """Pool initializer: load the detector and landmark models once per process."""
    import cv2

    cv2.setNumThreads(1)
    _WORKER["pipeline"] = FacePipeline(config)
    _WORKER["cache"] = FaceCache(output)


def _init_pool_worker(config: FaceConfig, output: str) -> None:
    """Pool initializer of a worker process: exit with the parent, then :func:`_init_worker`."""
    _exit_with_parent()
    _init_worker(config, output)


def _process_one(record: VideoRecord) -> dict:
    """Process and store one record in a worker; returns a small result dict."""
    start = time.perf_counter()
    result = _store_one(record)
    result["seconds"] = time.perf_counter() - start
    return result


def _store_one(record: VideoRecord) -> dict:
    pipeline: FacePipeline = _WORKER["pipeline"]
    cache: FaceCache = _WORKER["cache"]
    meta = dict(record.as_meta(), landmarks=pipeline.config.landmarks, size=pipeline.config.size,
                input=input_signature(record.path))
    try:
        entry = pipeline.process(record)
    except FaceError as exc:
        cache.write_failure(record.key, exc.status, str(exc), meta)
        return {"key": record.key, "status": exc.status, "error": str(exc), "faces": 0,
                "frames": 0}
    except Exception as exc:  # a bug or an unexpected decoder failure: record, keep going
        detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        cache.write_failure(record.key, "error", detail, meta)
        return {"key": record.key, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                "faces": 0, "frames": 0}
    cache.write(entry, quality=pipeline.config.jpeg_quality)
    return {"key": record.key, "status": "ok", "error": "", "faces": len(entry),
            "frames": int(entry.meta["frames_sampled"]), "warning": entry.meta.get("warning")}


def plan_work(cache: FaceCache, records: list[VideoRecord], summary: PreprocessSummary,
              retry_failed: bool = False) -> list[VideoRecord]:
    """The records to process: new ones, damaged entries, and recorded failures that are
    retried (all with ``retry_failed``; by default transient ones and those whose input file
    changed). Counts the rest in ``summary``."""
    todo = []
    kept: Counter = Counter()
    for r in records:
        if cache.has_entry(r.key):
            try:
                cache.check(r.key, decode=False)
                summary.already_ok += 1
                continue
            except DamagedEntryError as exc:
                summary.damaged.append(f"{r.key}: {exc}")
        elif cache.failure_path(r.key).exists():
            try:
                failure = cache.read_failure(r.key)
            except DamagedEntryError as exc:
                summary.damaged.append(f"{r.key}: {exc}")
            else:
                if not (retry_failed or failure.get("status") in TRANSIENT_STATUSES
                        or failure.get("input") != input_signature(r.path)):
                    kept[failure.get("status", "error")] += 1
                    continue
                summary.retried += 1
        todo.append(r)
    summary.already_failed = dict(sorted(kept.items()))
    summary.skipped = len(records) - len(todo)
    return todo


def run_preprocess(records: list[VideoRecord], output: Path, config: FaceConfig | None = None,
                   workers: int = 1, shard: tuple[int, int] = (0, 1), progress: bool = True,
                   retry_failed: bool = False, allow_mixed: bool = False) -> PreprocessSummary:
    """Fill the face cache at ``output`` with the records of one shard.

    Stale temporary files of interrupted runs are removed first and the settings are checked
    against the cache's (:func:`check_settings`). Intact entries and kept failures are skipped
    (:func:`plan_work`), so an interrupted run resumes and a damaged entry costs only its own
    rebuild. Each result is written atomically as soon as it is ready; ``manifest.jsonl`` is
    rebuilt at the end, also when the run fails. ``workers > 1`` uses a spawn-context process
    pool whose initializer loads the models once per process (workers exit with their parent).
    With ``config.decode_threads == 0`` each process decodes with the available CPUs divided
    among the workers.
    """
    config = config or FaceConfig()
    start = time.perf_counter()
    cache = FaceCache(output)
    cache.entries_dir.mkdir(parents=True, exist_ok=True)
    mine = shard_records(records, shard)
    for r in mine:
        validate_key(r.key)
    check_settings(cache, config, allow_mixed)
    summary = PreprocessSummary(total=len(mine), swept=len(cache.sweep_temp_files()))
    todo = plan_work(cache, mine, summary, retry_failed)
    failed: Counter = Counter()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="video", desc=f"preprocess {shard[0]}/{shard[1]}")

    def consume(results: Iterable[dict]) -> None:
        for n, res in enumerate(results):
            if n == 0:  # the first worker was ready this long after the start
                summary.startup_seconds = max(0.0, time.perf_counter() - start - res["seconds"])
            if res["status"] == "ok":
                summary.ok += 1
                if res.get("warning"):
                    summary.warnings.append(f"{res['key']}: {res['warning']}")
            else:
                failed[res["status"]] += 1
                summary.errors.append(f"{res['key']}: {res['status']}: {res['error']}")
            summary.faces += res["faces"]
            summary.frames += res["frames"]
            if bar is not None:
                elapsed = max(time.perf_counter() - start, 1e-9)
                done = summary.ok + sum(failed.values())
                bar.set_postfix(videos_s=f"{done / elapsed:.2f}",
                                frames_s=f"{summary.frames / elapsed:.1f}",
                                faces=summary.faces,
                                failed=sum(failed.values()), refresh=False)
                bar.update(1)

    procs = max(1, min(workers, len(todo)))
    config = replace(config, decode_threads=decode_threads_for(config, procs))
    try:
        if procs == 1:
            _init_worker(config, str(output))
            try:
                consume(_process_one(r) for r in todo)
            finally:
                _WORKER.clear()
        elif todo:
            ctx = mp.get_context("spawn")
            with ctx.Pool(procs, initializer=_init_pool_worker,
                          initargs=(config, str(output))) as pool:
                consume(pool.imap_unordered(_process_one, todo, chunksize=1))
    finally:
        if bar is not None:
            bar.close()
        cache.rebuild_manifest()
    summary.failed = dict(sorted(failed.items()))
    summary.seconds = time.perf_counter() - start
    return summary


# -- plain inputs ------------------------------------------------------------------------------

def _record(path: Path, key: str, where: str) -> VideoRecord:
    try:
        validate_key(key)
    except CacheError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return VideoRecord(key=key, path=str(path), label=-1, dataset="files",
                       method="unknown", split="test")


def _key_for(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return (rel.with_suffix("") if path.is_file() else rel).as_posix()


def _is_broken_link(path: Path) -> bool:
    """A symbolic link that does not lead to a file or folder (dangling, or a loop)."""
    return path.is_symlink() and not path.exists()


def _list_records(listing: Path) -> list[VideoRecord]:
    """Records of a ``.txt`` list: one path per line (``#`` comments, blank lines skipped).

    Paths are normalised lexically against the list's folder; one inside it is keyed relative
    to it, any other (``../x.mp4``, ``/data/x.mp4``) by its absolute path without the anchor.
    """
    base = Path(os.path.normpath(listing.parent.absolute()))
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{listing} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save the list as UTF-8, one path per line") from exc
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(os.path.normpath(base / line))  # base / "/abs" is "/abs"
        is_file = path.is_file() or not path.exists()  # missing: strip a suffix like a file's
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = path.relative_to(path.anchor)
        key = (rel.with_suffix("") if is_file else rel).as_posix()
        records.append(_record(path, key, f"{listing}:{lineno}"))
    return records


def _folder_records(folder: Path) -> list[VideoRecord]:
    """Records of the videos and leaf frame folders under ``folder``; video-named symbolic
    links that lead nowhere (dangling, loops) are kept so that they get a status too."""
    records = []
    for path in sorted(folder.rglob("*")):
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        if is_video and (path.is_file() or _is_broken_link(path)):
            records.append(_record(path, path.relative_to(folder).with_suffix("").as_posix(),
                                   str(path)))
        elif path.is_dir() and not any(
                p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES for p in path.iterdir()):
            records.append(_record(path, _key_for(path, folder), str(path)))  # a frame folder
    if not records and list_frame_images(folder):
        records.append(_record(folder, folder.name, str(folder)))  # one frame folder itself
    return records


def records_from_inputs(input: Path) -> list[VideoRecord]:
    """Records for a video file, a folder of videos and/or frame folders, or a ``.txt`` list.

    Keys are the paths relative to the input folder without suffix (POSIX); a single file's key
    is its stem; list entries are keyed relative to the list file's folder when inside it.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the offending path (also when two
    inputs share a key, e.g. ``clip.mp4`` and ``clip.avi``).
    """
    input = Path(input)
    if not input.exists():
        raise FileNotFoundError(f"input {input} does not exist")
    if input.is_file() and input.suffix.lower() == ".txt":
        records = _list_records(input)
    elif input.is_file():
        records = [_record(input, input.stem, str(input))]
    else:
        records = _folder_records(input)
        if not records:
            raise ValueError(f"{input} holds no videos {VIDEO_SUFFIXES} and no frame folders "
                             f"{IMAGE_SUFFIXES}")
    dups = duplicate_keys(records)
    if dups:
        raise ValueError(describe_duplicates(dups))
    return records
