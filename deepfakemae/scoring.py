"""Scoring videos end to end: video → aligned faces → per-branch frame scores → video scores.

Per video: faces are detected, landmarked and aligned (:class:`FacePipeline`) at the models'
input size, passed through the same JPEG round trip, resize and normalisation as cached training
faces, cut into 5-frame clips like the evaluation "tile" windows, and scored by a
:class:`~deepfakemae.modules.detector.DualNetworkDetector`. A frame in two windows gets the mean
of its scores; a video's score per branch is the mean over its frames, and its fused score the
mean of its branches' scores. Videos without a usable face are reported with their status and a
null probability, never as 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepfakemae.branches import FUSED
from deepfakemae.faces.cache import JPEG_QUALITY, FaceEntry, decode_jpeg, encode_jpeg
from deepfakemae.faces.pipeline import FaceError, FacePipeline
from deepfakemae.faces.tensors import resize_faces, to_tensor, window_positions
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.records import VideoRecord

CLIP_LEN = 5  # frames per Finetuning Network clip (paper §3.2.1)


@dataclass
class FrameScore:
    """Scores of one sampled frame with a face: ``scores`` maps ``fused`` and each branch label
    to a fake probability (flattened beside the frame index and box in JSON)."""

    frame_index: int
    box: list[float]  # x0, y0, x1, y1 in source pixels
    scores: dict[str, float]

    def as_dict(self) -> dict:
        """``{"frame_index", "box", "fused", <label>: ...}``."""
        return {"frame_index": self.frame_index, "box": self.box, **self.scores}


@dataclass
class VideoPrediction:
    """What scoring says about one input (``fake_probability`` None unless status ok)."""

    key: str
    path: str
    status: str = "ok"
    error: str = ""
    fake_probability: float | None = None
    branches: dict[str, float | None] = field(default_factory=dict)
    label: str | None = None
    num_faces: int = 0
    frames: list[FrameScore] = field(default_factory=list)
    explain: dict[str, str] = field(default_factory=dict)
    note: str = ""  # what to know about an ok score (e.g. a still image)

    def as_dict(self) -> dict:
        """The JSON form (frames flattened by :meth:`FrameScore.as_dict`)."""
        return {**asdict(self), "frames": [f.as_dict() for f in self.frames]}

    @classmethod
    def from_dict(cls, data: dict) -> VideoPrediction:
        """The prediction :meth:`as_dict` wrote; ``ValueError`` when ``data`` is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            raise ValueError(f"not a prediction: {str(data)[:80]}")
        try:
            frames = [FrameScore(int(f["frame_index"]), list(f["box"]),
                                 {k: float(v) for k, v in f.items()
                                  if k not in ("frame_index", "box")})
                      for f in data.get("frames", [])]
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            return cls(**dict(fields, frames=frames))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"prediction {data['key']!r} is malformed ({exc})") from exc

    def relabelled(self, threshold: float) -> VideoPrediction:
        """This prediction with its label recomputed for ``threshold`` (unchanged if unscored)."""
        if self.fake_probability is not None:
            self.label = "fake" if self.fake_probability >= threshold else "real"
        return self


def prepare_faces(entry: FaceEntry, size: int, quality: int = JPEG_QUALITY
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Crops and landmarks as training saw them: JPEG round trip (the cache stores JPEGs at
    ``quality``), then :func:`resize_faces` to ``size``. → ((T,size,size,3) uint8, (T,68,2))."""
    crops = np.stack([decode_jpeg(encode_jpeg(c, quality)) for c in entry.crops])
    return resize_faces(crops, entry.landmarks.astype(np.float32), size)


class VideoScorer:
    """Scores the aligned faces of a video with a :class:`DualNetworkDetector`."""

    def __init__(self, detector: DualNetworkDetector, device: torch.device, batch_size: int = 8,
                 clip_len: int = CLIP_LEN):
        self.detector = detector.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.clip_len = clip_len

    @property
    def img_size(self) -> int:
        """The faces' side: the detector's input size."""
        return self.detector.input_size

    @property
    def labels(self) -> list[str]:
        """The branch labels the detector scores with (``F``, ``M``, ...), without ``fused``."""
        return list(self.detector.labels.values())

    @torch.no_grad()
    def score_faces(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """(N,S,S,3) uint8 faces in frame order → per-face scores ``{fused, <label>...}`` (N,).

        Windows of ``clip_len`` faces at 0, T, 2T, ... plus one ending at the last face (fewer
        faces: one window padding with the last face); a face in two windows gets the mean.
        """
        n = len(crops)
        images = to_tensor(crops)  # (N, 3, S, S)
        windows = np.stack(window_positions(n, self.clip_len, "tile"))  # (W, T)
        sums = {b: np.zeros(n, np.float64) for b in (FUSED, *self.labels)}
        counts = np.zeros(n, np.float64)
        for start in range(0, len(windows), self.batch_size):
            pos = windows[start:start + self.batch_size]  # (b, T)
            clips = images[torch.from_numpy(pos)].to(self.device)  # (b, T, 3, S, S)
            scores = self.detector.branch_scores(clips)  # each (b, T)
            for branch, total in sums.items():
                np.add.at(total, pos.ravel(), scores[branch].float().cpu().numpy().ravel())
            np.add.at(counts, pos.ravel(), 1.0)
        return {b: total / counts for b, total in sums.items()}

    def score_entry(self, entry: FaceEntry, crops: np.ndarray, record: VideoRecord,
                    threshold: float) -> VideoPrediction:
        """A scored :class:`VideoPrediction` from prepared crops of ``entry``."""
        scores = self.score_faces(crops)
        frames = [FrameScore(frame_index=int(entry.frame_indices[i]),
                             box=[round(float(v), 2) for v in entry.boxes[i]],
                             scores={b: float(s[i]) for b, s in scores.items()})
                  for i in range(len(crops))]
        branches = {b: float(scores[b].mean()) for b in self.labels}
        fused = float(np.mean(list(branches.values())))
        return VideoPrediction(key=record.key, path=record.path, fake_probability=fused,
                               branches=branches,
                               label="fake" if fused >= threshold else "real",
                               num_faces=len(crops), frames=frames)

    def failure(self, record: VideoRecord, status: str, error: str) -> VideoPrediction:
        """A prediction for a video that could not be scored (every branch null)."""
        return VideoPrediction(record.key, record.path, status, error,
                               branches=dict.fromkeys(self.labels))


#: ``explain(crop, landmarks, key) -> {figure: path}``: figures of a video's middle face
Explainer = Callable[[np.ndarray, np.ndarray, str], dict[str, str]]


#: ``keep_faces(crops, prediction)``: sees every scored video's (N,S,S,3) uint8 faces
FacesHook = Callable[[np.ndarray, VideoPrediction], None]


#: the note of an input with a single frame (a still image, or a one-frame video)
STILL_NOTE = ("a single frame (a still image?): scored as a video of that one face, without "
              "the motion the Finetuning Network was trained on")


def iter_scores(records: Iterable[VideoRecord], scorer: VideoScorer, pipeline: FacePipeline,
                threshold: float = 0.5, explain: Explainer | None = None,
                keep_faces: FacesHook | None = None) -> Iterator[VideoPrediction]:
    """Score the records one at a time, yielding each prediction as soon as it is made
    (failures become predictions with their status; an input of one frame gets
    :data:`STILL_NOTE`); ``explain`` is called on each scored video's middle face and
    ``keep_faces`` on all of its scored faces."""
    for record in records:
        try:
            entry = pipeline.process(record)
        except FaceError as exc:
            yield scorer.failure(record, exc.status, str(exc))
            continue
        except Exception as exc:  # an unexpected decoder failure: report it, keep going
            yield scorer.failure(record, "error", f"{type(exc).__name__}: {exc}")
            continue
        crops, landmarks = prepare_faces(entry, scorer.img_size)
        prediction = scorer.score_entry(entry, crops, record, threshold)
        notes = [STILL_NOTE] if entry.meta.get("num_frames_total") == 1 else []
        if entry.meta.get("video_stream"):
            notes.append(f"faces found in video stream {entry.meta['video_stream']} "
                         "(the first stream has none)")
        prediction.note = "; ".join(notes)
        if explain is not None:
            middle = len(crops) // 2  # the middle sampled face
            prediction.explain = explain(crops[middle], landmarks[middle], record.key)
        if keep_faces is not None:
            keep_faces(crops, prediction)
        yield prediction


def score_videos(records: Iterable[VideoRecord], scorer: VideoScorer, pipeline: FacePipeline,
                 threshold: float = 0.5, explain: Explainer | None = None
                 ) -> list[VideoPrediction]:
    """Every prediction of :func:`iter_scores`, as a list."""
    return list(iter_scores(records, scorer, pipeline, threshold, explain))


#: the stage-1 MAE of ``--explain`` reconstructions: (MAE, mask ratio, part variant)
Stage1 = tuple[MaskedAutoencoderViT, float, str]


def explainer(scorer: VideoScorer, out_dir: Path, stage1: Stage1 | None = None) -> Explainer:
    """An :data:`Explainer` writing ``<out_dir>/<key>/cam.png`` (every branch's Grad-CAM) and,
    given ``stage1 = (mae, mask ratio, part variant)``, ``reconstruction.png``."""
    from deepfakemae.explain import explain_face

    mae, ratio, variant = stage1 if stage1 is not None else (None, 0.5, "algorithm1")

    def explain(crop: np.ndarray, landmarks: np.ndarray, key: str) -> dict[str, str]:
        return explain_face(crop, landmarks, out_dir / key, scorer.detector.branch_modules(),
                            mae=mae, ratio=ratio, variant=variant, device=scorer.device)

    return explain
