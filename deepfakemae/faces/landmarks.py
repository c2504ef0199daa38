"""68-point facial landmarks for given face boxes: dlib (default) or face-alignment's FAN.

Every backend maps ``(image_rgb (H,W,3) uint8, boxes (N,4) x0,y0,x1,y1) -> (N,68,2) float32``
in the image's pixel coordinates, in the iBUG-300W point order (jaw 0-16, brows 17-26, nose
27-35, eyes 36-47, mouth 48-67).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.ibug68 import NUM_POINTS

BACKENDS = ("dlib", "fan")


class LandmarkError(DeepfakeMAEError, RuntimeError):
    """A landmark backend that cannot be built (the message names the cause and the fix)."""


class LandmarkBackend(ABC):
    """Predicts 68 landmarks for each face box of one image."""

    name: str = "base"

    @abstractmethod
    def __call__(self, image_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``image_rgb`` (H,W,3) uint8, ``boxes`` (N,4) float -> landmarks (N,68,2) float32."""


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Locate a model file shipped by ``face_recognition_models`` without importing it.

    The package's own helpers import ``pkg_resources`` (gone from setuptools >= 81), so the
    package folder is found through its import spec, which does not execute the package.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LandmarkError("package face_recognition_models is not installed; "
                            "run `pip install face-recognition-models`")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise LandmarkError(f"{path} is missing; reinstall face-recognition-models")
    return path


class DlibLandmarks(LandmarkBackend):
    """dlib's ensemble-of-regression-trees 68-point predictor (CPU, ~3 ms per face)."""

    name = "dlib"

    def __init__(self, model_path: str | Path | None = None):
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(model_path or dlib_model_path()))

    def __call__(self, image_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.zeros((len(boxes), NUM_POINTS, 2), np.float32)  # (N, 68, 2)
        image = np.ascontiguousarray(image_rgb)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            rect = self._dlib.rectangle(int(round(x0)), int(round(y0)),
                                        int(round(x1)), int(round(y1)))
            shape = self.predictor(image, rect)
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out


class FanLandmarks(LandmarkBackend):
    """face-alignment's 2D FAN (2DFAN4) on given boxes; weights download on first use."""

    name = "fan"

    def __init__(self, device: str = "cpu"):
        try:
            import face_alignment
        except ImportError as exc:
            raise LandmarkError(
                f"FAN landmarks need the face-alignment package ({exc}); install it with "
                "`pip install --no-deps face-alignment numba` or use `--landmarks dlib`") from exc
        try:
            self.model = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd",
                flip_input=False)
        except OSError as exc:  # urllib.error.URLError is an OSError
            raise LandmarkError(
                f"could not download the face-alignment (FAN) weights ({exc}); connect to the "
                "internet once so they are cached under ~/.cache/torch/hub, or use "
                "`--landmarks dlib`") from exc

    def __call__(self, image_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, NUM_POINTS, 2), np.float32)
        faces = [list(b) + [1.0] for b in boxes]  # FAN expects x0, y0, x1, y1, score
        preds = self.model.get_landmarks_from_image(image_rgb, detected_faces=faces)
        if preds is None or len(preds) != len(boxes):
            raise LandmarkError("face-alignment returned no landmarks for the given boxes")
        return np.stack([np.asarray(p, np.float32)[:, :2] for p in preds])  # (N, 68, 2)


def build_landmarks(name: str, device: str = "cpu") -> LandmarkBackend:
    """Build the landmark backend called ``name`` (``dlib`` or ``fan``)."""
    if name == "dlib":
        return DlibLandmarks()
    if name == "fan":
        return FanLandmarks(device=device)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {BACKENDS}")
