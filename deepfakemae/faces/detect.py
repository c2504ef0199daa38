"""dlib HOG face detection on downscaled frames, with the same person followed across frames.

The HOG detector's smallest window is about 80 x 80 px, and its cost grows with the pixel count.
:class:`FaceDetector` therefore

* detects on a copy whose longest side is at most ``max_side`` (boxes are mapped back to source
  pixels) and, when that finds nothing, once more at full resolution, so a face of >= ~80 source
  pixels is still found in a frame of any size;
* when the previous sampled frame had a face, first searches only a window around that face
  (``track``), rescaled so the face is ~``track_face_px`` wide -- a fraction of a full-frame
  pass -- and falls back to the full frame when the window holds no face;
* keeps one face per frame: the one overlapping the previous frame's face most (IoU), or the
  largest when there is no previous face or no overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Detection:
    """One face: ``box`` (4,) float32 x0, y0, x1, y1 in source pixels, dlib detector ``score``."""

    box: np.ndarray
    score: float

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


def select_face(boxes: np.ndarray, scores: np.ndarray, previous: np.ndarray | None
                ) -> Detection | None:
    """Pick the face that overlaps ``previous`` most, else the largest; ``None`` if none."""
    if len(boxes) == 0:
        return None
    if previous is not None and len(boxes) > 1:
        iou = box_iou(previous, boxes)
        if iou.max() > 0:
            i = int(iou.argmax())
            return Detection(boxes[i].astype(np.float32), float(scores[i]))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    i = int(areas.argmax())
    return Detection(boxes[i].astype(np.float32), float(scores[i]))


class FaceDetector:
    """dlib frontal (HOG) detector with downscaling, full-resolution retry and local tracking."""

    def __init__(self, max_side: int = 640, track: bool = True, track_face_px: int = 100,
                 track_window: float = 2.2, upsample: int = 0):
        import dlib

        self.max_side = max_side
        self.track = track
        self.track_face_px = track_face_px
        self.track_window = track_window
        self.upsample = upsample
        self._detector = dlib.get_frontal_face_detector()
        self.stats = {"tracked": 0, "detected": 0, "full_res": 0, "missed": 0}

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
        """The face to keep in ``image`` given the ``previous`` sampled frame's box (or None)."""
        if self.track and previous is not None:
            found = self.detect_near(image, previous)
            if found is not None:
                self.stats["tracked"] += 1
                return found
        boxes, scores = self.detect_all(image)
        found = select_face(boxes, scores, previous)
        self.stats["detected" if found is not None else "missed"] += 1
        return found
