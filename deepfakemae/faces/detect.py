"""Face detection on downscaled frames (dlib HOG, MTCNN as its fallback), with the same person
followed across frames.

The HOG detector's smallest window is about 80 x 80 px, and its cost grows with the pixel count.
:class:`FaceDetector` therefore

* detects on a copy whose longest side is at most ``max_side`` (boxes are mapped back to source
  pixels) and, when that finds nothing, once more at full resolution, so a face of >= ~80 source
  pixels is still found in a frame of any size;
* when the previous sampled frame had a face, first searches only a window around that face
  (``track``), rescaled so the face is ~``track_face_px`` wide -- a fraction of a full-frame
  pass -- and falls back to the full frame when the window holds no face;
* keeps one face per frame: the one overlapping the previous frame's face most (IoU), or the
  largest when there is no previous face or no overlap;
* with ``backend="dlib+mtcnn"`` (the default) runs MTCNN (``facenet-pytorch``, weights shipped in
  its wheel) on a frame where dlib found nothing -- dark, small, rotated, blurred or heavily
  compressed faces -- so easy frames cost what they did; ``backend="mtcnn"`` uses MTCNN alone.
  MTCNN's five points come with its detections (:attr:`Detection.points`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from deepfakemae.errors import DeepfakeMAEError

#: ``--face-detector`` choices: dlib alone, dlib with MTCNN when it finds nothing, MTCNN alone
FACE_DETECTORS = ("dlib+mtcnn", "dlib", "mtcnn")
DETECTORS = FACE_DETECTORS  # its old name
FACENET_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"


class FaceDetectorError(DeepfakeMAEError, RuntimeError):
    """A face detector backend that cannot be built (the message names the cause and the fix)."""


DetectorError = FaceDetectorError  # its old name


def check_face_detector(backend: str) -> None:
    """Raise :class:`FaceDetectorError` naming the fix when ``backend`` cannot be built here."""
    import importlib.util

    if backend not in FACE_DETECTORS:
        raise FaceDetectorError(f"unknown face detector {backend!r}; choose one of "
                                f"{FACE_DETECTORS}")
    if "mtcnn" in backend and importlib.util.find_spec("facenet_pytorch") is None:
        raise FaceDetectorError(
            f"--face-detector {backend} needs facenet-pytorch, which is not installed; install "
            f"it with `{FACENET_INSTALL}` (its pinned dependencies are not needed) or pass "
            "`--face-detector dlib`")


check_detector = check_face_detector  # its old name


class _OldDetectorFlag(argparse.Action):
    """``--detector``, the old spelling of ``--face-detector``: stores the value, notes the name."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("note: --detector is now --face-detector (the old spelling still works)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_face_detector_argument(parser: argparse.ArgumentParser, default: str | None,
                               help: str) -> None:
    """``--face-detector`` (``args.face_detector``) and its old spelling ``--detector``."""
    parser.add_argument("--face-detector", choices=FACE_DETECTORS, default=default, help=help)
    parser.add_argument("--detector", dest="face_detector", choices=FACE_DETECTORS,
                        action=_OldDetectorFlag, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


@dataclass
class Detection:
    """One face: ``box`` (4,) float32 x0, y0, x1, y1 in source pixels, the detector's ``score``,
    ``source`` (``dlib``, ``tracked`` or ``mtcnn``) and, from MTCNN, ``points`` (5,2) float32
    (left eye, right eye, nose tip, mouth left, mouth right) in source pixels."""

    box: np.ndarray
    score: float
    source: str = "dlib"
    points: np.ndarray | None = None

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (K,4) boxes -> (K,)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def select_index(boxes: np.ndarray, previous: np.ndarray | None) -> int | None:
    """Index of the box that overlaps ``previous`` most, else of the largest; ``None`` if none."""
    if len(boxes) == 0:
        return None
    if previous is not None and len(boxes) > 1:
        iou = box_iou(previous, boxes)
        if iou.max() > 0:
            return int(iou.argmax())
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(areas.argmax())


def select_face(boxes: np.ndarray, scores: np.ndarray, previous: np.ndarray | None
                ) -> Detection | None:
    """Pick the face that overlaps ``previous`` most, else the largest; ``None`` if none."""
    i = select_index(boxes, previous)
    if i is None:
        return None
    return Detection(boxes[i].astype(np.float32), float(scores[i]))


def brighten(image: np.ndarray, dark: float = 60.0, target: float = 110.0) -> np.ndarray:
    """``image`` (H,W,3) uint8 with a gamma curve that lifts its mean to ``target`` when the mean
    is below ``dark`` (an underexposed frame); other frames are returned unchanged."""
    mean = float(image.mean())
    if mean >= dark:
        return image
    gamma = np.log(target / 255.0) / np.log(max(mean, 0.5) / 255.0)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


class MtcnnDetector:
    """MTCNN (facenet-pytorch) on a copy downscaled to ``max_side``: all faces of a frame with
    their five points. Its weights ship inside the facenet-pytorch wheel (works offline)."""

    def __init__(self, max_side: int = 640, min_face: int = 20, threshold: float = 0.9,
                 device: str = "cpu"):
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise DetectorError(
                f"the MTCNN face detector needs facenet-pytorch ({exc}); install it with "
                f"`{FACENET_INSTALL}` (its pinned dependencies are not needed), or pass "
                "`--face-detector dlib`") from exc
        self.max_side = max_side
        self.threshold = threshold
        self._mtcnn = MTCNN(keep_all=True, min_face_size=min_face, device=device)

    def detect_all(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces of ``image`` (H,W,3) uint8 RGB (an underexposed one brightened first; at full
        resolution when the downscaled copy has none): boxes (K,4), scores (K,), points
        (K,5,2), all in source pixels, faces below ``threshold`` dropped."""
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        found = self._run(image, scale)
        if len(found[0]) == 0 and scale < 1.0:  # a face too small for the downscaled copy
            found = self._run(image, 1.0)
        return found

    def _run(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MTCNN on ``image`` resized by ``scale``; results in ``image`` pixels."""
        small = image
        if scale < 1.0:
            h, w = image.shape[:2]
            small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        small = brighten(np.ascontiguousarray(small))
        boxes, probs, points = self._mtcnn.detect(small, landmarks=True)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / scale
        probs = np.asarray(probs, np.float64).reshape(-1)
        points = np.asarray(points, np.float64).reshape(-1, 5, 2) / scale
        keep = probs >= self.threshold
        return boxes[keep], probs[keep], points[keep]

    def select(self, image: np.ndarray, previous: np.ndarray | None) -> Detection | None:
        """The face to keep in ``image`` given the ``previous`` box, or ``None``."""
        boxes, probs, points = self.detect_all(image)
        i = select_index(boxes, previous)
        if i is None:
            return None
        return Detection(boxes[i].astype(np.float32), float(probs[i]), "mtcnn",
                         points[i].astype(np.float32))


class FaceDetector:
    """dlib frontal (HOG) detector with downscaling, full-resolution retry and local tracking;
    MTCNN as its fallback (``dlib+mtcnn``) or alone (``mtcnn``)."""

    def __init__(self, max_side: int = 640, track: bool = True, track_face_px: int = 100,
                 track_window: float = 2.2, upsample: int = 0, backend: str = "dlib+mtcnn"):
        import dlib

        if backend not in DETECTORS:
            raise ValueError(f"unknown face detector {backend!r}; choose one of {DETECTORS}")
        self.backend = backend
        self.max_side = max_side
        self.track = track
        self.track_face_px = track_face_px
        self.track_window = track_window
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self._mtcnn: MtcnnDetector | None = None  # loaded when first needed (imports torch)
        self.stats = {"tracked": 0, "detected": 0, "full_res": 0, "mtcnn": 0, "missed": 0}

    @property
    def mtcnn(self) -> MtcnnDetector | None:
        """The MTCNN backend (built on first use, so easy videos never load it), or ``None``
        when ``backend`` is ``dlib``."""
        if self._mtcnn is None and "mtcnn" in self.backend:
            self._mtcnn = MtcnnDetector(self.max_side)
        return self._mtcnn

    def _run(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Detect on ``image`` resized by ``scale``; boxes (K,4) in ``image`` pixels, scores (K,)."""
        small = image
        if scale != 1.0:
            h, w = image.shape[:2]
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._detector.run(np.ascontiguousarray(small), self.upsample, 0.0)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
                         np.float64).reshape(-1, 4) / scale
        return boxes, np.asarray(scores, np.float64)

    def detect_all(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All faces of a frame: boxes (K,4) source pixels, scores (K,)."""
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        boxes, scores = self._run(image, scale)
        if len(boxes) == 0 and scale < 1.0:
            self.stats["full_res"] += 1
            boxes, scores = self._run(image, 1.0)
        return boxes, scores

    def detect_near(self, image: np.ndarray, previous: np.ndarray) -> Detection | None:
        """Search a window around the ``previous`` (4,) box only; ``None`` when it holds no face."""
        h, w = image.shape[:2]
        cx, cy = (previous[0] + previous[2]) / 2, (previous[1] + previous[3]) / 2
        side = max(previous[2] - previous[0], previous[3] - previous[1])
        half = side * self.track_window / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
        if x1 - x0 < 40 or y1 - y0 < 40:
            return None
        scale = min(1.0, self.track_face_px / max(side, 1.0))
        boxes, scores = self._run(image[y0:y1, x0:x1], scale)
        if len(boxes) == 0:
            return None
        boxes += [x0, y0, x0, y0]
        best = select_face(boxes, scores, previous)
        if best is None or box_iou(previous, best.box[None])[0] <= 0:
            return None
        return best

    def __call__(self, image: np.ndarray, previous: np.ndarray | None = None
                 ) -> Detection | None:
        """The face to keep in ``image`` given the ``previous`` sampled frame's box (or None);
        its ``source`` says which detector found it."""
        if self.backend == "mtcnn":
            found = self.mtcnn.select(image, previous)
            self.stats["mtcnn" if found is not None else "missed"] += 1
            return found
        if self.track and previous is not None:
            found = self.detect_near(image, previous)
            if found is not None:
                self.stats["tracked"] += 1
                found.source = "tracked"
                return found
        boxes, scores = self.detect_all(image)
        found = select_face(boxes, scores, previous)
        if found is not None:
            self.stats["detected"] += 1
            return found
        if "mtcnn" in self.backend:
            found = self.mtcnn.select(image, previous)
        self.stats["mtcnn" if found is not None else "missed"] += 1
        return found
