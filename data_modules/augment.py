"""Training augmentation for face crops with 68 landmarks (albumentations 2.x).

Geometric transforms move the landmarks with the pixels. A horizontal flip also swaps landmark
*identity*: after mirroring, the point that was the subject's left-eye outer corner (45) sits
where the right-eye outer corner (36) belongs, so the 68 rows are re-ordered with the iBUG
mirror permutation ``ibug68.FLIP_PERMUTATION`` and index 36 stays "the subject's right-eye
outer corner".

Clips get the same augmentation on every frame: the pipeline is re-seeded with the same seed
before each frame, so every random draw (flip, angle, JPEG quality, noise field) repeats.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from deepfakemae.faces.ibug68 import FLIP_PERMUTATION, NUM_POINTS  # noqa: E402


class LandmarkHorizontalFlip(A.HorizontalFlip):
    """Horizontal flip that mirrors the x coordinates *and* re-orders the 68 landmark rows.

    Keypoints must arrive as whole faces: a multiple of 68 rows, one face after another.
    """

    def apply_to_keypoints(self, keypoints: np.ndarray, **params) -> np.ndarray:
        flipped = super().apply_to_keypoints(keypoints, **params)  # (N, 2+) with x -> W-1-x
        n = len(flipped)
        if n % NUM_POINTS:
            raise ValueError(
                f"LandmarkHorizontalFlip needs groups of {NUM_POINTS} keypoints, got {n}")
        faces = flipped.reshape(n // NUM_POINTS, NUM_POINTS, -1)  # (F, 68, C)
        return faces[:, FLIP_PERMUTATION].reshape(n, -1)


#: the probabilities ``build_train_transform`` takes
AUGMENT_PROBABILITIES = ("flip_p", "affine_p", "color_p", "jpeg_p", "noise_p", "blur_p",
                         "downscale_p", "grid_shuffle_p")
#: every key of the datamodule's ``augment`` mapping: the probabilities and the ranges
AUGMENT_KEYS = (*AUGMENT_PROBABILITIES, "color_range", "downscale_min", "grid_shuffle")


def build_train_transform(
    flip_p: float = 0.5,
    affine_p: float = 0.3,
    color_p: float = 0.3,
    jpeg_p: float = 0.3,
    noise_p: float = 0.2,
    blur_p: float = 0.1,
    downscale_p: float = 0.0,
    color_range: float = 0.2,
    downscale_min: float = 0.5,
    grid_shuffle_p: float = 0.0,
    grid_shuffle: int = 4,
) -> A.Compose:
    """The training pipeline: flip + mild affine (move landmarks), colour, JPEG, noise, blur,
    and (off by default) a resolution jitter and a tile shuffle of the whole crop.

    ``color_range``: brightness, contrast and saturation change by up to this fraction either
    way (hue by up to 0.15 of it). ``downscale_p``: the whole crop shrunk to a random
    ``downscale_min``..1 of its side and enlarged back (bilinear), the face and its surround
    alike, so a face rendered at a lower resolution than its frame stays the softer of the two.
    ``grid_shuffle_p``: the crop cut into ``grid_shuffle`` × ``grid_shuffle`` tiles put back in a
    random order (off by default): the face's layout, and with it who it is, is gone, while
    what lies inside a tile (blur, a hard edge, a colour step) stays.
    """
    if not 0.0 <= color_range < 1.0:
        raise ValueError(f"augment color_range must be in [0, 1), got {color_range}")
    if not 0.0 < downscale_min <= 1.0:
        raise ValueError(f"augment downscale_min must be in (0, 1], got {downscale_min}")
    if grid_shuffle < 2:
        raise ValueError(f"augment grid_shuffle (tiles per side) must be >= 2, got {grid_shuffle}")
    lo, hi = 1.0 - color_range, 1.0 + color_range
    return A.Compose(
        [
            LandmarkHorizontalFlip(p=flip_p),
            A.Affine(scale=(0.95, 1.05), translate_percent=(-0.03, 0.03), rotate=(-8, 8),
                     border_mode=0, fill=0, p=affine_p),
            A.OneOf([
                A.ColorJitter(brightness=(lo, hi), contrast=(lo, hi), saturation=(lo, hi),
                              hue=(-0.15 * color_range, 0.15 * color_range), p=1.0),
                A.RandomBrightnessContrast(brightness_limit=(-color_range, color_range),
                                           contrast_limit=(-color_range, color_range), p=1.0),
            ], p=color_p),
            # only when asked for: an extra transform would shift the random draws of the rest
            *([A.Downscale(scale_range=(downscale_min, 1.0),
                           interpolation_pair={"downscale": cv2.INTER_AREA,
                                               "upscale": cv2.INTER_LINEAR}, p=downscale_p)]
              if downscale_p > 0 else []),
            *([A.RandomGridShuffle(grid=(grid_shuffle, grid_shuffle), p=grid_shuffle_p)]
              if grid_shuffle_p > 0 else []),
            A.ImageCompression(quality_range=(60, 100), p=jpeg_p),
            A.GaussNoise(std_range=(0.01, 0.05), p=noise_p),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.5), p=blur_p),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=0,
    )


class FaceAugment:
    """Applies one albumentations pipeline to a frame or a clip with its landmarks."""

    def __init__(self, transform: A.Compose | None = None):
        self.transform = transform if transform is not None else build_train_transform()

    def __call__(self, crops: np.ndarray, landmarks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``crops`` (T,H,W,3) uint8, ``landmarks`` (T,68,2) -> the same shapes, augmented.

        Every frame is transformed with the pipeline seeded by ``seed``, so all T frames share
        the same random parameters.
        """
        out_crops = np.empty_like(crops)
        out_lms = np.empty(landmarks.shape, np.float32)
        for t in range(len(crops)):
            self.transform.set_random_seed(int(seed))
            res = self.transform(image=crops[t], keypoints=landmarks[t].astype(np.float32))
            out_crops[t] = res["image"]
            out_lms[t] = np.asarray(res["keypoints"], np.float32)[:, :2]
        return out_crops, out_lms
