"""Many videos -> a face cache (:func:`run_preprocess`): resume, shards, cache settings,
worker processes, progress bar and summary."""

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

from deepfakemae.faces.cache import CacheError, DamagedEntryError, FaceCache, validate_key
from deepfakemae.faces.input_files import describe_duplicates, duplicate_keys
from deepfakemae.faces.pipeline import FaceConfig, FaceError, FacePipeline, decode_threads_for
from deepfakemae.records import VideoRecord

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


#: a face detector's name in the ``detector`` setting (dlib alone keeps its earlier wording)
SETTING_NAMES = {"dlib": "dlib-hog", "dlib+mtcnn": "dlib-hog+mtcnn", "mtcnn": "mtcnn"}
#: the ``cache.json`` field that names the face detector (a ``--face-detector`` choice)
FACE_DETECTOR_FIELD = "face_detector"


def detector_setting(config: FaceConfig) -> str:
    """The detector as ``cache.json``'s settings record it: name, ``max_side`` and ``track``."""
    return (f"{SETTING_NAMES[config.detector]} max_side={config.detect_max_side} "
            f"track={config.track}")


def recorded_face_detector(recorded: dict | None) -> str | None:
    """The ``--face-detector`` a ``cache.json`` record's first settings were made with: its
    ``face_detector`` field, else (a cache from before the field) the name that opens its
    ``detector`` setting; ``None`` when the record names neither."""
    recorded = recorded or {}
    if recorded.get(FACE_DETECTOR_FIELD) in SETTING_NAMES:
        return recorded[FACE_DETECTOR_FIELD]
    settings = recorded.get("settings")
    setting = str(settings.get("detector", "")) if isinstance(settings, dict) else ""
    return next((name for name, spelt in SETTING_NAMES.items()
                 if setting.split(" ")[0] == spelt), None)


def cache_settings(config: FaceConfig) -> dict:
    """The settings that shape a cache's entries (recorded in ``cache.json``)."""
    return {"frames": config.frames, "size": config.size, "landmarks": config.landmarks,
            "margin": round(float(config.margin), 6),
            "detector": detector_setting(config),
            "jpeg_quality": config.jpeg_quality, "border": "constant"}


class SettingsMismatch(CacheError):
    """A run whose settings differ from those the cache was made with."""


def check_settings(cache: FaceCache, config: FaceConfig, allow_mixed: bool = False) -> None:
    """Record this run's settings in ``cache.json``; refuse settings that differ from the
    recorded ones unless ``allow_mixed`` (then the new settings are added to the record).

    A cache with face entries (``.npz``; failure records carry no faces) but without a
    recognisable ``cache.json`` (missing, not a JSON
    object, no ``settings``) is refused too: its entries' settings are unknown, and recording
    this run's would label them wrongly. With ``allow_mixed`` the record notes that entries
    made before it have unknown settings (``"unrecorded": true``)."""
    wanted = cache_settings(config)
    recorded = cache.read_settings()
    if recorded is None or not isinstance(recorded.get("settings"), dict):
        entries = [k for k in cache.keys() if cache.has_entry(k)]  # faces, not failures
        if entries and not allow_mixed:
            state = ("is missing" if not cache.settings_path.exists()
                     else "does not hold a settings record")
            raise SettingsMismatch(
                f"{cache.settings_path} {state}, but the face cache {cache.root} holds "
                f"{len(entries)} entries made with settings it cannot tell; restore that "
                "cache.json (e.g. from a copy of the cache), preprocess into another --output, "
                "or pass --allow-mixed-settings to add this run's entries anyway (the record "
                "then says the earlier ones have unrecorded settings)")
        cache.write_settings({"settings": wanted, "mixed": [],
                              FACE_DETECTOR_FIELD: config.detector,
                              **({"unrecorded": True} if entries else {})})
        return
    first = recorded["settings"]
    if first == wanted or wanted in recorded.get("mixed", []):
        return
    diff = ", ".join(f"{k} {first.get(k)!r} (cache) vs {wanted.get(k)!r} (this run)"
                     for k in sorted(set(first) | set(wanted)) if first.get(k) != wanted.get(k))
    if first.get("border") != wanted.get("border"):
        diff += (" (a cache made before out-of-frame crop pixels got a constant fill has "
                 "mirrored borders there; no option recreates them)")
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
