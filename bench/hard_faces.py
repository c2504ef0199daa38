"""Face yield on hard media made from the bundled clips: dlib alone vs dlib with MTCNN fallback.

Every 15th frame of the ten GRID clips (50 frames) plus skimage's astronaut is turned into

* ``dark``      -- gamma 2 and 5 % of the light (mean grey level ~4, an unlit room);
* ``small``     -- the face ~50 px wide, pasted on a noisy 1920x1080 canvas;
* ``portrait``  -- a 1080x1920 (portrait) canvas with the frame scaled to its width;
* ``rot+30`` / ``rot-30`` -- rotated by +-30 degrees;
* ``lowres``    -- downscaled to a quarter of its side (a ~30 px face);
* ``jpeg``      -- JPEG quality 5.

A frame counts as found when the pipeline keeps a face whose 68 landmarks lie within 0.15
inter-ocular distances (mean) of the untouched frame's, mapped through the same transform. It
prints the yield per kind and overall, for ``--detector dlib`` and ``dlib+mtcnn``, with the
seconds per frame, and which detector found each face. A benchmark, not a test.

Usage: ``python bench/hard_faces.py [--step 15]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepfakemae.faces.pipeline import FaceConfig, FacePipeline  # noqa: E402

GRID = REPO / "deepfakemae" / "assets" / "grid"
TOLERANCE = 0.15  # mean landmark error, inter-ocular distances


def source_frames(step: int) -> list[np.ndarray]:
    """Every ``step``-th frame of each bundled GRID clip, and the astronaut (RGB uint8)."""
    frames = [skimage.data.astronaut()]
    for clip in sorted(GRID.glob("*.mpg")):
        with av.open(str(clip)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        frames += decoded[::step]
    return frames


def affine(image: np.ndarray, mat: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` warped by the (2,3) ``mat`` onto a ``size`` (w, h) canvas of sensor noise."""
    rng = np.random.default_rng(0)
    canvas = rng.integers(40, 90, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.warpAffine(image, mat, size, dst=canvas, borderMode=cv2.BORDER_TRANSPARENT), mat


def scaled(image: np.ndarray, scale: float, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``image`` scaled by ``scale`` and centred on a ``size`` canvas."""
    h, w = image.shape[:2]
    mat = np.array([[scale, 0, (size[0] - w * scale) / 2], [0, scale, (size[1] - h * scale) / 2]])
    return affine(image, mat, size)


def rotated(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` rotated about its centre."""
    h, w = image.shape[:2]
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, mat, (w, h), borderMode=cv2.BORDER_REFLECT_101), mat


def jpeg(image: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` through a JPEG round trip."""
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy(), np.eye(2, 3)


def dark(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` underexposed: gamma 2, 5 % of the light."""
    return (np.power(image / 255.0, 2.0) * 255 * 0.05).astype(np.uint8), np.eye(2, 3)


def small(image: np.ndarray, face_width: float) -> tuple[np.ndarray, np.ndarray]:
    """The face ~50 px wide on a 1920x1080 canvas."""
    return scaled(image, 50.0 / face_width, (1920, 1080))


#: kind -> transform(image, face width) -> (hard image, (2,3) map from source pixels)
KINDS: dict[str, Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]] = {
    "dark": lambda im, fw: dark(im),
    "small": small,
    "portrait": lambda im, fw: scaled(im, 1080 / im.shape[1], (1080, 1920)),
    "rot+30": lambda im, fw: rotated(im, 30),
    "rot-30": lambda im, fw: rotated(im, -30),
    "lowres": lambda im, fw: scaled(im, 0.25, (im.shape[1] // 4, im.shape[0] // 4)),
    "jpeg": lambda im, fw: jpeg(im, 5),
}


def found_face(pipeline: FacePipeline, image: np.ndarray, expected: np.ndarray
               ) -> str | None:
    """The detector that found a face with landmarks near ``expected`` (68,2), or ``None``."""
    found = pipeline.detector(image)
    marks = None if found is None else pipeline.face_landmarks(image, found)
    if marks is None:
        return None
    iod = np.linalg.norm(expected[42:48].mean(0) - expected[36:42].mean(0))
    return found.source if np.abs(marks - expected).mean() / iod <= TOLERANCE else None


def main() -> None:
    """Print the hard-media yield of both detector settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=int, default=15, help="every step-th frame of each clip")
    args = parser.parse_args()
    reference = FacePipeline(FaceConfig(detector="dlib", track=False))
    sources = []
    for image in source_frames(args.step):
        face = reference.detector(image)
        if face is not None:
            sources.append((image, reference.face_landmarks(image, face), face.width))
    print(f"{len(sources)} source frames x {len(KINDS)} kinds; a face counts when its landmarks "
          f"are within {TOLERANCE} IOD of the untouched frame's")
    for detector in ("dlib", "dlib+mtcnn"):
        pipeline = FacePipeline(FaceConfig(detector=detector, track=False))
        total, hits, by = 0, 0, Counter()
        start = time.perf_counter()
        for kind, make in KINDS.items():
            kind_hits = 0
            for image, marks, width in sources:
                hard, mat = make(image, width)
                source = found_face(pipeline, hard, marks @ mat[:, :2].T + mat[:, 2])
                kind_hits += source is not None
                by[source or "missed"] += 1
            total += len(sources)
            hits += kind_hits
            print(f"  {detector:>10} {kind:>8}: {kind_hits}/{len(sources)} "
                  f"({100 * kind_hits / len(sources):.0f} %)")
        seconds = time.perf_counter() - start
        print(f"{detector:>12} overall: {hits}/{total} = {100 * hits / total:.1f} % "
              f"({1000 * seconds / total:.0f} ms/frame; found by {dict(by)})")


if __name__ == "__main__":
    main()
