"""One video -> aligned faces: decode sampled frames, detect, landmark, align
(:class:`FacePipeline`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.align import (
    DEFAULT_MARGIN,
    align_face,
    align_matrix,
    dlib_box_from_points,
    level_eyes,
    padding_fraction,
    transform_points,
)
from deepfakemae.faces.cache import JPEG_QUALITY, FaceEntry
from deepfakemae.faces.detect import Detection, FaceDetector
from deepfakemae.faces.ibug68 import five_points
from deepfakemae.faces.landmarks import build_landmarks
from deepfakemae.faces.video import (
    VideoError,
    count_video_streams,
    read_sampled,
    sample_indices,
)
from deepfakemae.records import VideoRecord


class FaceError(DeepfakeMAEError, RuntimeError):
    """A video that yields no usable face; ``status`` is a cache failure status."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class FaceConfig:
    """Settings of the face pipeline (every field is a ``deepfakemae preprocess`` option)."""

    frames: int = 32  # frames sampled uniformly per video
    size: int = 224  # side of the square aligned crop
    landmarks: str = "dlib"  # dlib | fan
    device: str = "cpu"  # torch device of the FAN backend
    detect_max_side: int = 640  # frames are downscaled to this longest side for detection
    detector: str = "dlib+mtcnn"  # dlib+mtcnn (MTCNN when dlib finds nothing) | dlib | mtcnn
    track: bool = True  # search near the previous frame's face before the whole frame
    margin: float = DEFAULT_MARGIN  # background around the face, fraction of the crop side
    jpeg_quality: int = JPEG_QUALITY
    decoder: str = "pyav"  # pyav (skips unwanted non-reference frames) | decord
    decode_threads: int = 0  # decoder threads per process; 0: the CPUs divided among workers


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def decode_threads_for(config: FaceConfig, workers: int = 1) -> int:
    """Decoder threads per process: ``config.decode_threads``, or when 0 the available CPUs
    divided among ``workers`` processes (at least 1), so workers x threads fits the machine."""
    if config.decode_threads > 0:
        return config.decode_threads
    return max(1, available_cpus() // max(1, workers))


#: largest mean distance (inter-ocular distances) between the 68-point predictor's five points
#: and MTCNN's for the landmarks to be kept (agreeing faces measure 0.03-0.06)
MAX_POINT_ERROR = 0.25


class FacePipeline:
    """Detects, landmarks and aligns the sampled frames of one video (models load once)."""

    def __init__(self, config: FaceConfig | None = None):
        self.config = config or FaceConfig()
        self.detector = FaceDetector(max_side=self.config.detect_max_side, track=self.config.track,
                                     backend=self.config.detector)
        self.landmarks = build_landmarks(self.config.landmarks, self.config.device)

    def face_landmarks(self, frame: np.ndarray, found: Detection) -> np.ndarray | None:
        """(68,2) landmarks in ``frame`` pixels of the face ``found``; ``None`` when the
        predictor disagrees with MTCNN's five points (the frame is then dropped).

        An MTCNN face is turned upright by its eye points and given the box dlib's detector
        would give it, which is what the 68-point predictor is trained on."""
        if found.points is None:
            return self.landmarks(frame, found.box[None])[0]
        mat = level_eyes(found.points)
        upright = cv2.warpAffine(frame, mat, (frame.shape[1], frame.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        box = dlib_box_from_points(transform_points(found.points, mat))
        marks = transform_points(self.landmarks(upright, box[None])[0],
                                 cv2.invertAffineTransform(mat))
        iod = max(float(np.linalg.norm(found.points[1] - found.points[0])), 1.0)
        error = np.linalg.norm(five_points(marks) - found.points, axis=1).mean() / iod
        return marks.astype(np.float32) if error <= MAX_POINT_ERROR else None

    def process(self, record: VideoRecord) -> FaceEntry:
        """Aligned faces of ``record``; raises :class:`FaceError` when there are none.

        A file with several video streams whose first one shows no face is searched stream
        by stream; the first stream with a face is used (``meta["video_stream"]``)."""
        cfg = self.config
        found, stream = self._stream_faces(record, 0), 0
        streams = 1 if found[0][0] else count_video_streams(record.path)
        for other in range(1, streams):
            try:
                candidate = self._stream_faces(record, other)
            except FaceError:
                continue  # a stream that does not decode: look at the next
            if candidate[0][0]:
                found, stream = candidate, other
                break
        (crops, marks, kept, scores, boxes, sources, padding), frames, indices, total, fps = found
        if not crops:
            where = f"{len(frames)} sampled frames" + (
                f" of its first video stream, nor in any of its other {streams - 1}"
                if streams > 1 else "")
            raise FaceError("no_face", f"{record.path}: no face found in {where}")
        meta = dict(record.as_meta(), num_frames_total=int(total), fps=float(fps),
                    landmarks=self.landmarks.name, size=cfg.size, frames_sampled=len(indices),
                    detectors=sources, padding=padding)
        if stream:
            meta["video_stream"] = stream
        wanted = len(sample_indices(int(total), cfg.frames))
        if len(indices) < wanted:  # the container promised more frames than decode
            meta["warning"] = (f"only {len(indices)} of {wanted} sampled frames decoded "
                               f"({total} frames announced): truncated or damaged file?")
        return FaceEntry(
            key=record.key,
            crops=np.stack(crops),  # (T, S, S, 3)
            landmarks=np.stack(marks).astype(np.float32),  # (T, 68, 2)
            frame_indices=np.asarray(kept, np.int64),  # (T,)
            scores=np.asarray(scores, np.float32),  # (T,)
            boxes=np.stack(boxes).astype(np.float32),  # (T, 4)
            meta=meta,
        )

    def _stream_faces(self, record: VideoRecord, stream: int) -> tuple:
        """``(faces, frames, indices, total, fps)`` of one video stream of ``record``:
        ``faces`` is ``(crops, landmarks, frame numbers, scores, boxes, detectors, padding)``
        lists over the sampled frames with a usable face."""
        cfg = self.config
        try:
            frames, indices, total, fps = read_sampled(record.path, cfg.frames,
                                                       decode_threads_for(cfg), cfg.decoder,
                                                       stream=stream)
        except VideoError as exc:
            raise FaceError(exc.status, str(exc)) from exc
        crops, marks, kept, scores, boxes, sources, padding = [], [], [], [], [], [], []
        previous = None
        for frame, index in zip(frames, indices, strict=True):
            found = self.detector(frame, previous)
            lm = None if found is None else self.face_landmarks(frame, found)  # (68, 2) px
            if lm is None:
                continue  # frames without a usable face are dropped from the entry
            crop, lm_crop = align_face(frame, lm, cfg.size, cfg.margin)
            mat = align_matrix(lm, cfg.size, cfg.margin)
            padding.append(round(padding_fraction(frame.shape[:2], mat, cfg.size), 4))
            crops.append(crop)
            marks.append(lm_crop)
            kept.append(int(index))
            scores.append(found.score)
            boxes.append(found.box)
            sources.append(found.source)
            previous = found.box
        return (crops, marks, kept, scores, boxes, sources, padding), frames, indices, total, fps
