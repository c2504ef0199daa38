"""``deepfakemae score --video ...`` (also spelt ``predict --video``): score videos end to end
with the two stage-2 checkpoints of a run folder (``--run-dir``, default ``$RUN_DIR`` or ``runs``).

Per video: faces are detected, landmarked and aligned (:class:`FacePipeline`) at the models'
input size, passed through the same JPEG round trip, resize and normalisation as cached training
faces, cut into 5-frame clips like the evaluation "tile" windows, and scored by
:class:`DualNetworkDetector`. A frame in two windows gets the mean of its scores; a video's
score per branch is the mean over its frames, and fused = (F + M) / 2. Videos without a usable
face are reported with their status and a null probability, never as 0.5.

Writes ``<output>/predictions.json`` and ``<output>/predictions.csv``; ``--explain`` also writes
``<output>/explain/<key>/{reconstruction,cam}.png`` (see :mod:`deepfakemae.explain`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from deepfakemae.faces.cache import JPEG_QUALITY, FaceEntry, decode_jpeg, encode_jpeg
from deepfakemae.faces.detect import DETECTORS, DetectorError, check_detector
from deepfakemae.faces.input_files import records_from_inputs
from deepfakemae.faces.landmarks import BACKENDS, LandmarkError
from deepfakemae.faces.pipeline import FaceConfig, FaceError, FacePipeline
from deepfakemae.faces.tensors import resize_faces, to_tensor, window_positions
from deepfakemae.modules.checkpoints import CheckpointError, load_stage1_mae
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.records import VideoRecord

CLIP_LEN = 5  # frames per Finetuning Network clip (paper §3.2.1)
BRANCHES = ("fused", "F", "M")
CSV_FIELDS = ("key", "path", "status", "fake_probability", "F", "M", "label", "num_faces", "error")


class UsageError(ValueError):
    """Bad arguments or missing checkpoints (exit code 2)."""


#: where ``make demo`` / ``deepfakemae demo`` leave the demo's models
DEMO_RUN_DIR = Path("runs") / "demo" / "main"


def run_dir(args: argparse.Namespace | None = None) -> Path:
    """``--run-dir``, else ``$RUN_DIR``, else ``runs`` -- where the stages wrote their
    checkpoints (``<run dir>/<stage>/checkpoints/last.ckpt``)."""
    given = getattr(args, "run_dir", None)
    return Path(given) if given is not None else Path(os.environ.get("RUN_DIR") or "runs")


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``predict --video`` options to ``parser``."""
    runs = "<run dir>"
    parser.add_argument("--video", "--input", dest="video", type=Path, required=True,
                        help="a video, a folder of videos and/or frame folders, or a .txt list")
    parser.add_argument("--run-dir", type=Path,
                        help="the training run whose models score the videos: its "
                             "finetune/, mapping/ and pretrain/ checkpoints (default $RUN_DIR or "
                             f"runs; after `make demo`: {DEMO_RUN_DIR})")
    parser.add_argument("--finetune-ckpt", type=Path,
                        help=f"Finetuning Network checkpoint "
                             f"(default {runs}/finetune/checkpoints/last.ckpt)")
    parser.add_argument("--mapping-ckpt", type=Path,
                        help=f"Mapping Network checkpoint "
                             f"(default {runs}/mapping/checkpoints/last.ckpt)")
    parser.add_argument("--mae-ckpt", type=Path,
                        help=f"stage-1 MAE checkpoint, for --explain reconstructions "
                             f"(default {runs}/pretrain/checkpoints/last.ckpt)")
    parser.add_argument("--output", type=Path, default=Path("predictions"),
                        help="folder for predictions.json/.csv and explain/ (default predictions)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--crop-size", type=int,
                        help="side of the aligned face crop before resizing to the model's input "
                             "(default: the model's input size; use the preprocess --size the "
                             "training cache was built with to mirror training exactly)")
    parser.add_argument("--landmarks", choices=BACKENDS, default="dlib", help="landmark backend")
    parser.add_argument("--detector", choices=DETECTORS, default="dlib+mtcnn",
                        help="face detector: dlib HOG with MTCNN on frames where it finds no "
                             "face (default), dlib alone, or MTCNN alone")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=8, help="5-frame clips per forward pass")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="fused probability at or above which a video is labelled fake")
    parser.add_argument("--explain", action="store_true",
                        help="save facial-part reconstructions and class-activation maps as PNGs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# -- results -----------------------------------------------------------------------------------

@dataclass
class FrameScore:
    """Scores of one sampled frame with a face."""

    frame_index: int
    box: list[float]  # x0, y0, x1, y1 in source pixels
    fused: float
    F: float
    M: float


@dataclass
class VideoPrediction:
    """What ``predict`` says about one input (``fake_probability`` None unless status ok)."""

    key: str
    path: str
    status: str = "ok"
    error: str = ""
    fake_probability: float | None = None
    branches: dict[str, float | None] = field(default_factory=lambda: {"F": None, "M": None})
    label: str | None = None
    num_faces: int = 0
    frames: list[FrameScore] = field(default_factory=list)
    explain: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def csv_row(self) -> dict:
        return {"key": self.key, "path": self.path, "status": self.status,
                "fake_probability": _fmt(self.fake_probability), "F": _fmt(self.branches["F"]),
                "M": _fmt(self.branches["M"]), "label": self.label or "",
                "num_faces": self.num_faces, "error": self.error}


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


# -- scoring -----------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


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
        """Input side of the Finetuning Network's MAE encoder (the faces' side)."""
        return int(self.detector.finetune.classifier.encoder.img_size)

    @torch.no_grad()
    def score_faces(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """(N,S,S,3) uint8 faces in frame order → per-face scores ``{fused, F, M}`` (N,) each.

        Windows of ``clip_len`` faces at 0, T, 2T, ... plus one ending at the last face (fewer
        faces: one window padding with the last face); a face in two windows gets the mean.
        """
        n = len(crops)
        images = to_tensor(crops)  # (N, 3, S, S)
        windows = np.stack(window_positions(n, self.clip_len, "tile"))  # (W, T)
        sums = {b: np.zeros(n, np.float64) for b in BRANCHES}
        counts = np.zeros(n, np.float64)
        for start in range(0, len(windows), self.batch_size):
            pos = windows[start:start + self.batch_size]  # (b, T)
            clips = images[torch.from_numpy(pos)].to(self.device)  # (b, T, 3, S, S)
            scores = self.detector.branch_scores(clips)  # each (b, T)
            for branch in BRANCHES:
                np.add.at(sums[branch], pos.ravel(), scores[branch].float().cpu().numpy().ravel())
            np.add.at(counts, pos.ravel(), 1.0)
        return {b: sums[b] / counts for b in BRANCHES}


def score_entry(scorer: VideoScorer, entry: FaceEntry, crops: np.ndarray, record: VideoRecord,
                threshold: float) -> VideoPrediction:
    """A scored :class:`VideoPrediction` from prepared crops of ``entry``."""
    scores = scorer.score_faces(crops)
    frames = [FrameScore(frame_index=int(entry.frame_indices[i]),
                         box=[round(float(v), 2) for v in entry.boxes[i]],
                         fused=float(scores["fused"][i]), F=float(scores["F"][i]),
                         M=float(scores["M"][i]))
              for i in range(len(crops))]
    f, m = float(scores["F"].mean()), float(scores["M"].mean())
    fused = (f + m) / 2
    return VideoPrediction(key=record.key, path=record.path, fake_probability=fused,
                           branches={"F": f, "M": m},
                           label="fake" if fused >= threshold else "real",
                           num_faces=len(crops), frames=frames)


# -- the command -------------------------------------------------------------------------------

def _checkpoint(args: argparse.Namespace, given: Path | None, stage: str, what: str,
                fix: str) -> Path:
    """The checkpoint file to load for ``stage``; :class:`UsageError` naming it otherwise (and
    the ``--run-dir`` of the demo's models when they exist and were not asked for)."""
    path = given if given is not None else run_dir(args) / stage / "checkpoints" / "last.ckpt"
    if path.is_dir():
        raise UsageError(f"{what} checkpoint {path} is a folder, not a checkpoint file; pass "
                         f"the .ckpt file inside it (e.g. {path}/checkpoints/last.ckpt)")
    if not path.is_file():
        demo = DEMO_RUN_DIR / stage / "checkpoints" / "last.ckpt"
        if given is None and run_dir(args) != DEMO_RUN_DIR and demo.is_file():
            fix = (f"to score with the demo's models: `deepfakemae score --video {args.video} "
                   f"--run-dir {DEMO_RUN_DIR}`; otherwise {fix}")
        raise UsageError(f"{what} checkpoint {path} does not exist; {fix}")
    return path


STAGE2_FIX = ("train stage 2 first (`make train-stage2`, or `deepfakemae fit -c "
              "experiments/finetune.yaml` and `deepfakemae fit -c experiments/mapping.yaml`), "
              "pass the run folder that holds them with --run-dir, or pass "
              "--finetune-ckpt/--mapping-ckpt")


def load_detector(args: argparse.Namespace) -> DualNetworkDetector:
    """The fused detector from the two checkpoints; raises :class:`UsageError` naming the file."""
    finetune = _checkpoint(args, args.finetune_ckpt, "finetune", "Finetuning Network", STAGE2_FIX)
    mapping = _checkpoint(args, args.mapping_ckpt, "mapping", "Mapping Network", STAGE2_FIX)
    try:
        return DualNetworkDetector(str(finetune), str(mapping))
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc


def load_explain_mae(args: argparse.Namespace, device: torch.device):
    """``(mae, ratio, variant)`` for the reconstruction figure, or ``None`` with a note printed
    when the stage-1 checkpoint is missing or unusable (the cam figure is still drawn)."""
    path = args.mae_ckpt if args.mae_ckpt is not None else (
        run_dir(args) / "pretrain" / "checkpoints" / "last.ckpt")
    if not Path(path).is_file():
        print(f"note: stage-1 checkpoint {path} not found; skipping reconstruction.png "
              "(pass --mae-ckpt, or train stage 1 with `deepfakemae fit -c experiments/"
              "pretrain.yaml`)", file=sys.stderr)
        return None
    try:
        mae = load_stage1_mae(path).to(device).eval()
        # hyper-parameters only; mmap so that the weights are not read a second time
        hparams = torch.load(path, map_location="cpu", weights_only=True,
                             mmap=True).get("hyper_parameters", {})
    except (CheckpointError, RuntimeError) as exc:
        print(f"note: cannot use stage-1 checkpoint {path} ({exc}); skipping reconstruction.png",
              file=sys.stderr)
        return None
    return mae, float(hparams.get("mask_ratio", 0.5)), str(hparams.get("part_variant",
                                                                        "algorithm1"))


def print_table(predictions: list[VideoPrediction], out=None) -> None:
    """A compact fixed-width table of the predictions (to ``out``, default stdout)."""
    out = out if out is not None else sys.stdout
    width = max([len("video")] + [len(p.key) for p in predictions])
    print(f"{'video':<{width}}  {'status':<10} {'p(fake)':>7} {'F':>6} {'M':>6}  {'label':<5} "
          f"{'faces':>5}", file=out)
    for p in predictions:
        def num(v: float | None, w: int) -> str:
            return f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}"
        print(f"{p.key:<{width}}  {p.status:<10} {num(p.fake_probability, 7)} "
              f"{num(p.branches['F'], 6)} {num(p.branches['M'], 6)}  {p.label or '-':<5} "
              f"{p.num_faces:>5}", file=out)


def write_outputs(predictions: list[VideoPrediction], output: Path) -> tuple[Path, Path]:
    """Write ``predictions.json`` (full) and ``predictions.csv`` (one row per video)."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output / "predictions.json", output / "predictions.csv"
    json_path.write_text(json.dumps([p.as_dict() for p in predictions], indent=2) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(p.csv_row() for p in predictions)
    return json_path, csv_path


def predict_videos(records: list[VideoRecord], scorer: VideoScorer, pipeline: FacePipeline,
                   args: argparse.Namespace, explain_mae=None) -> list[VideoPrediction]:
    """Score every record (failures become predictions with their status)."""
    from tqdm.auto import tqdm

    predictions = []
    for record in tqdm(records, desc="scoring", unit="video",
                       disable=getattr(args, "no_progress", False) or len(records) < 2):
        try:
            entry = pipeline.process(record)
        except FaceError as exc:
            predictions.append(VideoPrediction(record.key, record.path, exc.status, str(exc)))
            continue
        except Exception as exc:  # an unexpected decoder failure: report it, keep going
            predictions.append(VideoPrediction(record.key, record.path, "error",
                                               f"{type(exc).__name__}: {exc}"))
            continue
        crops, landmarks = prepare_faces(entry, scorer.img_size)
        prediction = score_entry(scorer, entry, crops, record, args.threshold)
        if args.explain:
            from deepfakemae.explain import explain_face

            middle = len(crops) // 2  # the middle sampled face
            mae, ratio, variant = explain_mae if explain_mae is not None else (None, 0.5,
                                                                                "algorithm1")
            prediction.explain = explain_face(
                crops[middle], landmarks[middle], args.output / "explain" / record.key,
                scorer.detector.mapping.net, scorer.detector.finetune.classifier, mae=mae,
                ratio=ratio, variant=variant, device=scorer.device)
        predictions.append(prediction)
    return predictions


def run_predict_command(args: argparse.Namespace) -> int:
    """Run ``score --video``: 0 when every video was scored, 1 if some were not, 2 on usage."""
    try:
        if args.frames < 1 or args.batch_size < 1:
            raise UsageError("--frames and --batch-size must be >= 1")
        if not 0.0 <= args.threshold <= 1.0:
            raise UsageError("--threshold must be in [0, 1]")
        try:
            records = records_from_inputs(args.video)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
        try:
            check_detector(args.detector)
        except DetectorError as exc:
            raise UsageError(str(exc)) from exc
        device = resolve_device(args.device)
        scorer = VideoScorer(load_detector(args), device, args.batch_size)
        size = args.crop_size or scorer.img_size
        if size < 16:
            raise UsageError("--crop-size must be >= 16")
        pipeline = FacePipeline(FaceConfig(frames=args.frames, size=size,
                                           landmarks=args.landmarks, device=str(device),
                                           detector=args.detector))
    except (UsageError, LandmarkError) as exc:
        print(f"deepfakemae score: error: {exc}", file=sys.stderr)
        return 2
    explain_mae = load_explain_mae(args, device) if args.explain else None
    predictions = predict_videos(records, scorer, pipeline, args, explain_mae)
    json_path, csv_path = write_outputs(predictions, args.output)
    print_table(predictions)
    failed = [p for p in predictions if p.status != "ok"]
    for p in failed:
        print(f"  {p.key}: {p.status}: {p.error}", file=sys.stderr)
    print(f"wrote {json_path} and {csv_path}"
          + (f"; figures under {args.output / 'explain'}" if args.explain else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m deepfakemae.commands.predict --video ...``."""
    parser = add_predict_arguments(argparse.ArgumentParser(prog="deepfakemae score"))
    return run_predict_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
