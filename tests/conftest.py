"""Shared fixtures: small face caches built from ``skimage.data.astronaut()`` with real dlib
landmarks (detected once per session); every "video" is the same face, jittered per frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfakemae.faces.cache import FaceCache, FaceEntry

#: environment the configs and the plan runner read; tests set what they need themselves
RUN_ENV = ("RUN_DIR", "CACHE_DIR", "DEMO_CACHE", "PRECISION")


@pytest.fixture(autouse=True)
def _hermetic_run_environment(monkeypatch):
    """Tests do not inherit run locations from the caller (e.g. the Makefile's exports)."""
    for name in RUN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def astronaut_face_session() -> dict:
    """The astronaut image (512,512,3) RGB, its dlib face box (4,) and 68 landmarks (68,2)."""
    import dlib
    from skimage.data import astronaut

    from deepfakemae.faces.landmarks import DlibLandmarks

    image = np.ascontiguousarray(astronaut())
    rects = dlib.get_frontal_face_detector()(image, 0)
    assert len(rects) == 1, "dlib should find exactly one face in skimage's astronaut"
    r = rects[0]
    box = np.float32([r.left(), r.top(), r.right(), r.bottom()])
    landmarks = DlibLandmarks()(image, box[None])[0]  # (68, 2)
    return {"image": image, "box": box, "landmarks": landmarks}


def face_crop(face: dict, size: int, shift: tuple[float, float] = (0, 0), scale: float = 1.0,
              gain: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A (size,size,3) crop around the face (jittered) and its landmarks (68,2) in crop px."""
    x0, y0, x1, y1 = face["box"]
    side = 1.6 * max(x1 - x0, y1 - y0) * scale
    cx, cy = (x0 + x1) / 2 + shift[0], (y0 + y1) / 2 + shift[1]
    s = size / side
    m = np.float32([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]])  # source -> crop
    crop = cv2.warpAffine(face["image"], m, (size, size), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT)
    crop = np.clip(crop.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    lms = face["landmarks"] @ m[:, :2].T + m[:, 2]
    return crop, lms.astype(np.float32)


def video_entry(face: dict, key: str, num_frames: int, size: int, meta: dict,
                frame_step: int = 7) -> FaceEntry:
    """One cached "video": ``num_frames`` jittered crops of the astronaut face."""
    crops, lms = [], []
    seed = sum(key.encode())
    for t in range(num_frames):
        rng = np.random.default_rng([seed, t])
        crop, points = face_crop(face, size, shift=tuple(rng.uniform(-6, 6, 2)),
                                 scale=float(rng.uniform(0.95, 1.05)), gain=float(rng.uniform(0.9, 1.1)))
        crops.append(crop)
        lms.append(points)
    n = num_frames
    return FaceEntry(key=key, crops=np.stack(crops), landmarks=np.stack(lms),
                     frame_indices=np.arange(n, dtype=np.int64) * frame_step,
                     scores=np.ones(n, np.float32), boxes=np.tile(face["box"], (n, 1)),
                     meta=dict(meta, key=key, path=f"/videos/{key}.mp4"))


@pytest.fixture(scope="session")
def make_face_cache(astronaut_face_session) -> Callable[..., Path]:
    """Factory: ``make(root, videos, size=64, failures=())`` writes a cache and its manifest.

    ``videos``: dicts with ``key, label, dataset, method, split, frames``; ``failures``:
    ``(key, status)`` pairs recorded as failed inputs.
    """

    def make(root: Path, videos: Sequence[dict], size: int = 64,
             failures: Sequence[tuple[str, str]] = ()) -> Path:
        cache = FaceCache(root)
        root.mkdir(parents=True, exist_ok=True)
        for v in videos:
            meta = {k: v[k] for k in ("label", "dataset", "method", "split")}
            cache.write(video_entry(astronaut_face_session, v["key"], v["frames"], size, meta))
        for key, status in failures:
            cache.write_failure(key, status, f"test failure {status}",
                                {"label": 0, "dataset": "ffpp", "method": "real", "split": "train"})
        cache.rebuild_manifest()
        return root

    return make


def ffpp_videos() -> list[dict]:
    """A tiny FF++-like layout: train 4 real + 2x2 fakes, val 1+1, test 2+2 (odd frame counts)."""
    vids = []

    def add(split, method, idx, frames):
        label = 0 if method == "real" else 1
        vids.append({"key": f"ffpp/c23/{method}/{split}_{idx:03d}", "label": label,
                     "dataset": "ffpp", "method": method, "split": split, "frames": frames})

    for i, n in enumerate([6, 6, 3, 6]):  # one real video shorter than a 5-frame clip
        add("train", "real", i, n)
    for m in ("Deepfakes", "FaceSwap"):
        for i in range(2):
            add("train", m, i, 6)
    add("val", "real", 0, 4)
    add("val", "Deepfakes", 0, 4)
    for i, n in enumerate([5, 3]):
        add("test", "real", i, n)
    add("test", "Deepfakes", 0, 7)
    add("test", "FaceSwap", 0, 2)
    return vids


#: the methods per split of ``ffpp_videos()`` (the paper configs name all four of FF++'s)
FFPP_FIXTURE_METHODS = {"train": ("real", "Deepfakes", "FaceSwap"), "val": ("real", "Deepfakes")}


def ffpp_fixture_sources(cache_dir: Path | str) -> list[str]:
    """``--data.init_args.train/val`` flags: ``<cache_dir>/ffpp_c23`` (the ``ffpp_cache``)
    with the methods it holds, for stage-2 paper configs run on the fixture."""
    return [f"--data.init_args.{split}=[{{name: ffpp, cache: '{cache_dir}/ffpp_c23', "
            f"dataset: ffpp, split: {split}, methods: [{', '.join(methods)}]}}]"
            for split, methods in FFPP_FIXTURE_METHODS.items()]


@pytest.fixture(scope="session")
def ffpp_cache(make_face_cache, tmp_path_factory) -> Path:
    """Cache root holding ``ffpp_videos()`` at 64 px plus one ``no_face`` failure."""
    return make_face_cache(tmp_path_factory.mktemp("ffpp_cache"), ffpp_videos(),
                           failures=[("ffpp/c23/real/train_broken", "no_face")])


@pytest.fixture(scope="session")
def celebdf_cache(make_face_cache, tmp_path_factory) -> Path:
    """Cache root of a Celeb-DF-like test set: 2 real + 3 fake videos at 96 px."""
    vids = [{"key": f"celebdf/{m}/id{i}", "label": int(m != "real"), "dataset": "celebdf",
             "method": m, "split": "test", "frames": 3 + i}
            for m, n in (("real", 2), ("Celeb-synthesis", 3)) for i in range(n)]
    return make_face_cache(tmp_path_factory.mktemp("celebdf_cache"), vids, size=96)
