"""The iBUG-300W 68-point landmark scheme, and landmark coordinates under resizing.

Points are 0-based ``(x, y)`` rows in dlib/iBUG order: jaw 0-16 (8 the chin), brows 17-26, nose
27-35 (bridge 27-30, tip 30, base 33), eyes 36-47, mouth 48-67 (outer lips 48-59, inner 60-67).
"Right" and "left" are the subject's: the right eye (36-41) is on the image's left in a frontal
face.

Coordinates follow the pixel-centre convention: pixel ``(i, j)`` is centred at ``x = i, y = j``
(what dlib returns and ``cv2.warpAffine`` maps), so a crop of side ``S`` spans
``[-0.5, S - 0.5]``.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

NUM_POINTS = 68

JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))
LEFT_BROW = tuple(range(22, 27))
BROWS = RIGHT_BROW + LEFT_BROW
NOSE = tuple(range(27, 36))
NOSE_TIP = 30
NOSE_BASE = 33
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
EYES = RIGHT_EYE + LEFT_EYE
OUTER_LIPS = tuple(range(48, 60))
INNER_MOUTH = tuple(range(60, 68))
MOUTH = OUTER_LIPS + INNER_MOUTH
MOUTH_CORNERS = (48, 54)
#: jaw points at cheek height on the subject's right / left (the region masks' cheek box)
RIGHT_CHEEK_JAW = (1, 2, 3)
LEFT_CHEEK_JAW = (13, 14, 15)

#: left/right pairs that swap under a horizontal flip (the others lie on the midline)
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),  # jaw
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),  # brows
    (31, 35), (32, 34),  # nostrils (27-30 bridge and 33 base stay)
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # eyes
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),  # outer lips (51, 57 stay)
    (60, 64), (61, 63), (65, 67),  # inner lips (62, 66 stay)
)


def _flip_permutation() -> np.ndarray:
    perm = np.arange(NUM_POINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


#: ``flipped[i] = mirrored(original[FLIP_PERMUTATION[i]])``; an involution
FLIP_PERMUTATION: np.ndarray = _flip_permutation()

#: Mean frontal face in normalised crop coordinates (x, y in [0, 1]). Derived once from a dlib
#: 68-point detection on skimage's ``astronaut()`` image, made left-right symmetric and placed in
#: a square crop of 1.6 × the landmark width.
MEAN_FACE: tuple[tuple[float, float], ...] = (
    (0.188, 0.375), (0.198, 0.456), (0.208, 0.530), (0.221, 0.610), (0.248, 0.684), (0.292, 0.748),
    (0.356, 0.802), (0.423, 0.849), (0.500, 0.859), (0.577, 0.849), (0.644, 0.802), (0.708, 0.748),
    (0.752, 0.684), (0.779, 0.610), (0.792, 0.530), (0.802, 0.456), (0.813, 0.375), (0.235, 0.311),
    (0.272, 0.267), (0.325, 0.261), (0.379, 0.267), (0.433, 0.284), (0.567, 0.284), (0.621, 0.267),
    (0.675, 0.261), (0.728, 0.267), (0.765, 0.311), (0.500, 0.348), (0.500, 0.409), (0.500, 0.462),
    (0.500, 0.516), (0.433, 0.546), (0.466, 0.556), (0.500, 0.563), (0.534, 0.556), (0.567, 0.546),
    (0.298, 0.355), (0.332, 0.328), (0.379, 0.328), (0.416, 0.368), (0.372, 0.372), (0.329, 0.372),
    (0.584, 0.368), (0.621, 0.328), (0.668, 0.328), (0.702, 0.355), (0.671, 0.372), (0.628, 0.372),
    (0.349, 0.603), (0.403, 0.600), (0.460, 0.600), (0.500, 0.610), (0.540, 0.600), (0.597, 0.600),
    (0.651, 0.603), (0.601, 0.674), (0.544, 0.704), (0.500, 0.711), (0.456, 0.704), (0.399, 0.674),
    (0.369, 0.614), (0.460, 0.624), (0.500, 0.630), (0.540, 0.624), (0.631, 0.614), (0.540, 0.671),
    (0.500, 0.677), (0.460, 0.671),
)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(68,2) landmarks -> (5,2) eye centres (right, left), nose tip and mouth corners."""
    lm = np.asarray(landmarks, np.float64)
    return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[NOSE_TIP],
                     *lm[list(MOUTH_CORNERS)]])


Points = TypeVar("Points")


def rescale_landmarks(landmarks: Points, scale) -> Points:
    """Landmarks of a crop resized by ``scale`` (a number, or per-axis ``(sx, sy)``).

    Pixel-centre convention (module docstring): the image edge ``-0.5`` stays at ``-0.5``, so
    ``x' = (x + 0.5) * s - 0.5``, as ``cv2.resize`` and ``F.interpolate(align_corners=False)``
    sample. Works on numpy arrays and torch tensors of shape (..., 2).
    """
    return (landmarks + 0.5) * scale - 0.5
