"""Five-point similarity alignment of a face to a square canonical crop.

The five stable points (:func:`~deepfakemae.faces.ibug68.five_points`) are the two eye centres
(means of landmarks 36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54). The
canonical template below is the mean geometry of dlib landmarks on frontal faces, in units of
the inter-ocular distance with the origin between the eyes: brows reach y = -0.42, the chin
y = 1.97 and the jaw x = +-1.12. The crop is centred on (0, CENTRE_Y) and is wide enough that
this extent fills ``1 - 2 * margin`` of its side, so the whole face (brows to chin, jaw to jaw)
fits with background around it.

Crop pixels whose source lies outside the frame (a face near the frame edge, or a frame that is
already a tight face crop) are filled with ``PAD_RGB``, never with mirrored image content;
:func:`padding_fraction` measures their share (docs/DESIGN.md, "Choices the paper leaves open").
"""

from __future__ import annotations

import cv2
import numpy as np

from deepfakemae.constants import IMAGENET_MEAN
from deepfakemae.faces.ibug68 import five_points

#: canonical 5 points (left eye, right eye, nose tip, mouth left, mouth right), IOD units
TEMPLATE_5 = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.52], [-0.405, 1.18], [0.405, 1.18]],
                      np.float64)
FACE_EXTENT = 2.45  # brow-to-chin / jaw-to-jaw span in IOD units, with a little slack
CENTRE_Y = 0.72  # vertical crop centre (a bit above the landmark centre, to keep the forehead)
DEFAULT_MARGIN = 0.12
#: fill of crop pixels outside the frame: the ImageNet mean colour (0 after normalisation)
PAD_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)


def template_points(size: int = 224, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """The 5 template points in pixels of a ``size`` x ``size`` crop with ``margin`` per side."""
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    unit = size * (1.0 - 2.0 * margin) / FACE_EXTENT  # pixels per inter-ocular distance
    centre = np.array([0.0, CENTRE_Y])
    return (TEMPLATE_5 - centre) * unit + size / 2.0  # (5, 2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping ``src`` onto ``dst``.

    Umeyama's closed form; returns a (2,3) matrix ``M`` with ``dst ~= M @ [src; 1]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # no reflections
        fix[1, 1] = -1.0
    rot = u @ fix @ vt
    var_s = (s_c ** 2).sum() / len(src)
    scale = (sig * np.diag(fix)).sum() / var_s if var_s > 0 else 1.0
    mat = np.zeros((2, 3))
    mat[:, :2] = scale * rot
    mat[:, 2] = mu_d - scale * rot @ mu_s
    return mat


def transform_points(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Apply a (2,3) affine matrix to (..., 2) points."""
    pts = np.asarray(points, np.float64)
    return pts @ mat[:, :2].T + mat[:, 2]


def align_matrix(landmarks: np.ndarray, size: int = 224, margin: float = DEFAULT_MARGIN
                 ) -> np.ndarray:
    """(2,3) similarity from image pixels to the canonical crop of (68,2) ``landmarks``."""
    return similarity_transform(five_points(landmarks), template_points(size, margin))


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 224,
               margin: float = DEFAULT_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Warp one face to the canonical crop (pixels outside the frame: ``PAD_RGB``).

    ``image_rgb`` (H,W,3) uint8, ``landmarks`` (68,2) in image pixels ->
    ``(crop (size,size,3) uint8, landmarks (68,2) float32 in crop pixels)``.
    """
    mat = align_matrix(landmarks, size, margin)
    crop = cv2.warpAffine(image_rgb, mat, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=PAD_RGB)
    return crop, transform_points(landmarks, mat).astype(np.float32)


def padding_fraction(frame_hw: tuple[int, int], mat: np.ndarray, size: int) -> float:
    """Share of a ``size`` x ``size`` crop made by (2,3) ``mat`` whose pixel centres map
    outside a frame of ``frame_hw`` = (H, W) pixels (0: the crop lies inside the frame)."""
    h, w = frame_hw
    ys, xs = np.mgrid[0:size, 0:size]
    src = transform_points(np.stack([xs, ys], -1).reshape(-1, 2),
                           cv2.invertAffineTransform(mat))  # (size*size, 2) frame px
    outside = (src[:, 0] < 0) | (src[:, 0] > w - 1) | (src[:, 1] < 0) | (src[:, 1] > h - 1)
    return float(outside.mean())


#: a dlib HOG box around a face, in inter-ocular distances from the eye midpoint with the eyes
#: level (x0, y0, x1, y1): measured against MTCNN's eye points on the bundled faces
DLIB_BOX_FROM_EYES = np.array([-1.25, -0.72, 1.25, 1.78])


def level_eyes(points: np.ndarray) -> np.ndarray:
    """(2,3) rotation about the eye midpoint that makes the eyes of (5,2) ``points`` level."""
    points = np.asarray(points, np.float64)
    left, right = points[0], points[1]
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    mid = (left + right) / 2
    return np.concatenate([rot, (mid - rot @ mid)[:, None]], axis=1)


def dlib_box_from_points(points: np.ndarray) -> np.ndarray:
    """The (4,) box dlib's HOG detector would give for a face with level eyes at (5,2)
    ``points`` (left eye, right eye, nose, mouth corners), for the 68-point predictor."""
    points = np.asarray(points, np.float64)
    mid = (points[0] + points[1]) / 2
    iod = max(float(np.linalg.norm(points[1] - points[0])), 1.0)
    return np.concatenate([mid, mid]) + DLIB_BOX_FROM_EYES * iod
