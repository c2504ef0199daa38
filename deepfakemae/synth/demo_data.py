"""Build the miniature demo dataset from the ten bundled GRID clips, in the FF++ on-disk layout.

Layout written under ``output`` (what the FF++ index reads, unchanged)::

    original_sequences/youtube/c23/videos/NNN.mp4          real clips, ids 000..009
    manipulated_sequences/<Method>/c23/videos/T_S.mp4      fakes: target T, source S
    splits/{train,val,test}.json                           [["000","001"], ...] id pairs
    demo_sources.json                                      id -> GRID clip, seed, attribution,
                                                           strength levels, one entry per fake
    .demo_cache/landmarks/<clip>.npz                       dlib landmarks per real clip

The clips sorted by name get the ids 000..; consecutive ids form the split pairs (3/1/1 pairs =
6/2/2 speakers), so splits are identity-disjoint. A pair [a, b] owns the fakes ``a_b`` and
``b_a`` of every method. Methods (all made by :mod:`deepfakemae.synth.swap`, frame i of the
source onto frame i of the target):

- ``FaceSwapWarp`` whole-face swap between two speakers;
- ``LipsSwap`` / ``EyesSwap`` the same swap restricted to the mouth / eyes-and-brows region;
- ``SelfBlend`` the target's face blended onto a moved, recoloured copy of itself (the source
  id only names the file and seeds the parameters).

Artifact strengths (``strengths``, :mod:`deepfakemae.synth.strengths`): strength 0 is the method
above; strength ``k > 0`` is the method ``<Method>@s<k>`` in a folder of its own, made from the
same frames with the same drawn parameters and the level's artifacts added (lower generator
resolution, harder blend edge, less colour transfer). ``demo_sources.json`` lists every fake
with its method, strength and parameters under ``fakes``.

Videos are H.264 at CRF 23 ("c23"), written atomically (temp file + rename): a rerun reuses
finished files. The same seed gives the same decoded frames.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import atomic_path, atomic_write
from deepfakemae.faces.landmarks import DlibLandmarks
from deepfakemae.faces.video import VideoError, open_video
from deepfakemae.synth.methods import (
    DEMO_REGIONS,
    DEMO_SOURCES_FILE,
    DEMO_STRENGTHS,
    strength_method,
)
from deepfakemae.synth.strengths import LEVELS, level, self_blend_at, swap_at
from deepfakemae.synth.swap import SelfBlendParams, SwapParams, self_blend, swap_region

ATTRIBUTION = ("GRID audio-visual sentence corpus, M. Cooke, J. Barker, S. Cunningham, X. Shao "
               "(2006), CC BY 4.0.")
COMPRESSION = "c23"
CRF = 23
SOURCES_FILE = DEMO_SOURCES_FILE
CACHE_DIR = ".demo_cache"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DemoMethod:
    """One fake-making method: a region swap between two speakers, or a self-blend."""

    name: str
    region: str | None  # swap region (face, mouth, eyes); None = self-blend

    def params(self, rng: np.random.Generator,
               strength: int = 0) -> SwapParams | SelfBlendParams:
        """One video's parameters: drawn from ``rng`` (the same draw at every strength), with
        the artifacts of ``strength`` applied."""
        if self.region is None:
            return self_blend_at(SelfBlendParams.sample(rng), level(strength))
        return swap_at(SwapParams.sample(self.region, rng), level(strength))

    def make(self, target: np.ndarray, target_points: np.ndarray, source: np.ndarray,
             source_points: np.ndarray, rng: np.random.Generator,
             strength: int = 0) -> np.ndarray:
        """Fake clip (T,H,W,3) uint8 from target/source clips (T,H,W,3) and landmarks (T,68,2),
        at artifact ``strength`` (0: no added artifact)."""
        count = min(len(target), len(source))
        params = self.params(rng, strength)
        if isinstance(params, SelfBlendParams):
            frames = [self_blend(target[i], target_points[i], params) for i in range(count)]
        else:
            frames = [swap_region(target[i], target_points[i], source[i], source_points[i],
                                  params) for i in range(count)]
        return np.stack(frames)


METHODS: dict[str, DemoMethod] = {name: DemoMethod(name, region)
                                  for name, region in DEMO_REGIONS.items()}
ALL_METHODS: tuple[str, ...] = tuple(METHODS)


class DemoDataError(DeepfakeMAEError, RuntimeError):
    """The demo dataset cannot be built (the message names the cause and the fix; exit code 1)."""

    exit_code = 1


# ----------------------------------------------------------------------------- inputs

def grid_clip_paths(directory: str | Path | None = None) -> list[Path]:
    """The GRID clips (sorted by name) from ``directory``, default the package's ``assets/grid``."""
    if directory is None:
        directory = Path(str(importlib.resources.files("deepfakemae") / "assets" / "grid"))
    paths = sorted(Path(directory).glob("*.mpg"))
    if len(paths) < 2 or len(paths) % 2:
        raise DemoDataError(f"{directory} holds {len(paths)} .mpg clips; the demo needs an even "
                            "number >= 2 (reinstall deepfakemae to restore its assets/grid)")
    return paths


def read_video_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """The first ``max_frames`` (default all) frames of ``path`` as (T,H,W,3) uint8 RGB, decoded
    in order by the face pipeline's PyAV reader."""
    try:
        source = open_video(path, backend="pyav")
    except VideoError as exc:
        raise DemoDataError(f"cannot decode {path}: {exc}") from exc
    try:
        count = source.num_frames if max_frames is None else min(max_frames, source.num_frames)
        frames = source.read(np.arange(count))
    finally:
        source.close()
    if not frames:
        raise DemoDataError(f"{path} has no video frames")
    return np.stack(frames)


def demo_splits(ids: Sequence[str]) -> dict[str, list[list[str]]]:
    """Identity-disjoint FF++-style split pairs: consecutive ids pair up, 60/20/20 of the pairs."""
    pairs = [[ids[i], ids[i + 1]] for i in range(0, len(ids) - 1, 2)]
    held_out = max(1, round(0.2 * len(pairs))) if len(pairs) >= 3 else 0
    train = len(pairs) - 2 * held_out
    return {"train": pairs[:train], "val": pairs[train:train + held_out],
            "test": pairs[train + held_out:]}


# ----------------------------------------------------------------------------- landmarks

class ClipLandmarker:
    """dlib's frontal detector on every full frame + the face pipeline's 68-point predictor."""

    def __init__(self) -> None:
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = DlibLandmarks()

    def __call__(self, frames: np.ndarray, name: str = "clip") -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (T,68,2) float32 and detected (T,) bool; missed frames reuse the nearest box."""
        boxes: list[tuple[int, int, int, int] | None] = []
        for frame in frames:
            rects = self.detector(frame, 0) or self.detector(frame, 1)
            if rects:
                r = max(rects, key=lambda r: r.width() * r.height())
                boxes.append((r.left(), r.top(), r.right(), r.bottom()))
            else:
                boxes.append(None)
        found = np.array([b is not None for b in boxes])
        if not found.any():
            raise DemoDataError(f"no face found in any frame of {name}")
        hits = np.flatnonzero(found)
        nearest = [boxes[i] or boxes[hits[np.abs(hits - i).argmin()]] for i in range(len(frames))]
        points = np.stack([self.landmarks(frame, [box])[0]
                           for frame, box in zip(frames, nearest, strict=True)])  # (T, 68, 2)
        return points, found


class _ClipStore:
    """Decoded clips and their landmarks (memory for the current pair, .npz on disk)."""

    def __init__(self, clips: dict[str, Path], cache_dir: Path, max_frames: int | None):
        self.clips, self.cache_dir, self.max_frames = clips, cache_dir, max_frames
        self._frames: dict[str, np.ndarray] = {}
        self._points: dict[str, np.ndarray] = {}
        self._landmarker: ClipLandmarker | None = None

    def keep_only(self, ids: Iterable[str]) -> None:
        keep = set(ids)
        self._frames = {k: v for k, v in self._frames.items() if k in keep}

    def frames(self, vid: str) -> np.ndarray:
        if vid not in self._frames:
            self._frames[vid] = read_video_frames(self.clips[vid], self.max_frames)
        return self._frames[vid]

    def points(self, vid: str) -> np.ndarray:
        if vid in self._points:
            return self._points[vid]
        frames = self.frames(vid)
        path = self.cache_dir / f"{self.clips[vid].stem}.npz"
        points = None
        if path.is_file():
            with np.load(path) as data:
                if len(data["landmarks"]) >= len(frames):
                    points = data["landmarks"][: len(frames)]
        if points is None:
            if self._landmarker is None:
                self._landmarker = ClipLandmarker()
            points, found = self._landmarker(frames, name=str(self.clips[vid]))
            atomic_write(path, lambda handle: np.savez(handle, landmarks=points, detected=found))
        self._points[vid] = points
        return points


# ----------------------------------------------------------------------------- outputs

def video_encoder() -> str:
    """``h264`` when PyAV has libx264, else ``mp4v`` (OpenCV)."""
    import av

    return "h264" if "libx264" in av.codecs_available else "mp4v"


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, crf: int = CRF) -> None:
    """Encode (T,H,W,3) uint8 RGB ``frames`` to mp4 at ``path`` atomically (temp + rename)."""
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p: even
    with atomic_path(path) as tmp:
        if video_encoder() == "h264":
            _write_h264(tmp, frames, fps, crf)
        else:
            _write_mp4v(tmp, frames, fps)


def _write_h264(path: Path, frames: np.ndarray, fps: int, crf: int) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Byte-reproducible output: one thread, and no macroblock-tree rate control, whose
        # assembly made the bytes vary from run to run in a process that had used dlib.
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_mp4v(path: Path, frames: np.ndarray, fps: int) -> None:
    import cv2

    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DemoDataError(f"OpenCV cannot write {path}; install PyAV with libx264 (`pip install av`)")
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()


def _write_json(path: Path, data: object) -> None:
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def real_video_path(root: Path, vid: str) -> Path:
    """``root/original_sequences/youtube/c23/videos/<vid>.mp4``."""
    return root / "original_sequences" / "youtube" / COMPRESSION / "videos" / f"{vid}.mp4"


def fake_video_path(root: Path, method: str, target: str, source: str) -> Path:
    """``root/manipulated_sequences/<method>/c23/videos/<target>_<source>.mp4``."""
    return (root / "manipulated_sequences" / method / COMPRESSION / "videos"
            / f"{target}_{source}.mp4")


def _check_methods(methods: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(methods))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise DemoDataError(f"unknown or no methods {unknown or chosen}; choose from {ALL_METHODS}")
    return chosen


def _check_strengths(strengths: Iterable[int]) -> list[int]:
    chosen = sorted(set(strengths))
    unknown = [k for k in chosen if k not in LEVELS]
    if unknown or not chosen:
        raise DemoDataError(f"unknown or no artifact strengths {unknown or chosen}; choose from "
                            f"{DEMO_STRENGTHS}")
    return chosen


def fake_rng(seed: int, method: str, target: str, source: str) -> np.random.Generator:
    """The generator of one fake's parameters: seeded by the base ``method``, not its strength,
    so every strength of a pair draws the same parameters."""
    return np.random.default_rng([seed, zlib.crc32(method.encode()), int(target), int(source)])


def fake_jobs(splits: dict[str, list[list[str]]], methods: Sequence[str],
              strengths: Sequence[int]) -> list[tuple[str, str, str, int, str]]:
    """``(target, source, method, strength, split)`` of every fake, pair by pair."""
    return [(t, s, m, k, name) for name in SPLITS for a, b in splits[name]
            for t, s in ((a, b), (b, a)) for m in methods for k in strengths]


def _fake_entries(seed: int, jobs: list[tuple[str, str, str, int, str]]) -> dict[str, dict]:
    """``demo_sources.json``'s ``fakes``: ``<method name>/<T>_<S>`` -> method, strength, pair,
    split and the video's parameters."""
    out = {}
    for target, source, method, strength, split in jobs:
        params = METHODS[method].params(fake_rng(seed, method, target, source), strength)
        out[f"{strength_method(method, strength)}/{target}_{source}"] = {
            "method": method, "strength": strength, "target": target, "source": source,
            "split": split, "params": dataclasses.asdict(params)}
    return out


def _check_config(path: Path, seed: int, frames: int | None, clips: dict[str, Path],
                  methods: list[str], strengths: list[int], fakes: dict[str, dict]) -> dict:
    """Read or start ``demo_sources.json``; refuse a folder built with another seed/length or
    other strength levels. Methods, strengths and fakes of an earlier build are kept."""
    sources = {vid: p.name for vid, p in clips.items()}
    names = [strength_method(m, k) for m in methods for k in strengths]
    levels = {str(k): dataclasses.asdict(v) for k, v in LEVELS.items()}
    config = {"dataset": "deepfakemae GRID demo (FaceForensics++ layout)",
              "attribution": ATTRIBUTION, "seed": seed, "frames": frames,
              "compression": COMPRESSION, "encoder": video_encoder(), "methods": names,
              "strengths": strengths, "artifact_levels": levels, "sources": sources,
              "fakes": fakes}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("seed", "frames", "sources"):
            if old.get(key) != config[key]:
                raise DemoDataError(
                    f"{path} was built with {key}={old.get(key)!r}, not {config[key]!r}; rerun "
                    f"with the same --seed/--frames, or choose a new --output (or delete "
                    f"{path.parent})")
        if old.get("artifact_levels", levels) != levels:
            raise DemoDataError(
                f"{path} was built with other artifact strength levels "
                f"({old['artifact_levels']!r}) than this version's ({levels!r}); choose a new "
                f"--output (or delete {path.parent})")
        config["methods"] = list(dict.fromkeys(list(old.get("methods", [])) + names))
        config["strengths"] = sorted(set(old.get("strengths", [0])) | set(strengths))
        config["fakes"] = {**old.get("fakes", {}), **fakes}
    return config


def build_demo_dataset(output: str | Path, seed: int = 0, methods: Sequence[str] = ALL_METHODS,
                       frames: int | None = None, progress: bool = True,
                       clips_dir: str | Path | None = None,
                       strengths: Sequence[int] = (0,)) -> Path:
    """Build (or finish) the GRID demo dataset under ``output`` and return its root.

    ``frames`` keeps only the first frames of every clip (fast tests); ``clips_dir`` replaces the
    bundled GRID clips; ``strengths`` are the artifact strengths every method is made at
    (default: 0 only, today's set; strength k > 0 writes the method ``<Method>@s<k>``). Finished
    videos are reused, so a rerun after an interruption only writes what is missing. The same
    ``seed`` gives the same decoded frames.
    """
    from tqdm.auto import tqdm

    if frames is not None and frames < 1:
        raise DemoDataError(f"--frames must be >= 1, got {frames}")
    root = Path(output)
    chosen = _check_methods(methods)
    levels = _check_strengths(strengths)
    paths = grid_clip_paths(clips_dir)
    clips = {f"{i:03d}": p for i, p in enumerate(paths)}
    ids = list(clips)
    splits = demo_splits(ids)
    fakes = fake_jobs(splits, chosen, levels)
    config = _check_config(root / SOURCES_FILE, seed, frames, clips, chosen, levels,
                           _fake_entries(seed, fakes))
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / SOURCES_FILE, config)
    for name in SPLITS:
        _write_json(root / "splits" / f"{name}.json", splits[name])

    store = _ClipStore(clips, root / CACHE_DIR / "landmarks", frames)
    jobs = [(vid, None, None, 0) for vid in ids] + [job[:4] for job in fakes]
    bar = tqdm(jobs, desc="demo-data", unit="video", disable=not progress)
    for target, source, method, strength in bar:
        if method is None:
            path = real_video_path(root, target)
            if not path.is_file():
                store.keep_only([target])
                write_video(path, store.frames(target))
            continue
        path = fake_video_path(root, strength_method(method, strength), target, source)
        if path.is_file():
            continue
        store.keep_only([target, source])
        fake = METHODS[method].make(store.frames(target), store.points(target),
                                    store.frames(source), store.points(source),
                                    fake_rng(seed, method, target, source), strength)
        write_video(path, fake)
    bar.close()
    return root


# ----------------------------------------------------------------------------- CLI
