"""Face pipeline: decode sampled frames, detect, landmark, align, and cache the crops."""

from deepfakemae.faces.align import align_face, similarity_transform, template_points
from deepfakemae.faces.cache import (
    CacheError,
    DamagedEntryError,
    FaceCache,
    FaceEntry,
    validate_key,
)
from deepfakemae.faces.detect import Detection, FaceDetector, select_face
from deepfakemae.faces.ibug68 import five_points
from deepfakemae.faces.input_files import records_from_inputs
from deepfakemae.faces.landmarks import (
    DlibLandmarks,
    FanLandmarks,
    LandmarkBackend,
    LandmarkError,
    build_landmarks,
)
from deepfakemae.faces.pipeline import FaceConfig, FaceError, FacePipeline
from deepfakemae.faces.runner import PreprocessSummary, run_preprocess, shard_records
from deepfakemae.faces.video import VideoError, open_video, read_sampled, sample_indices

__all__ = [
    "CacheError", "DamagedEntryError", "Detection", "DlibLandmarks", "FaceCache", "FaceConfig", "FaceDetector",
    "FaceEntry", "FaceError", "FacePipeline", "FanLandmarks", "LandmarkBackend", "LandmarkError",
    "PreprocessSummary", "VideoError", "align_face", "build_landmarks", "five_points",
    "open_video", "read_sampled", "records_from_inputs", "run_preprocess", "sample_indices",
    "select_face", "shard_records", "similarity_transform", "template_points", "validate_key",
]
