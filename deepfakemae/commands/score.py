"""``deepfakemae score --video ...`` (old spelling ``predict --video``): score videos end to end
with the stage-2 checkpoints of a run folder (``--run-dir``, default ``$RUN_DIR`` or ``runs``).

Scoring is :mod:`deepfakemae.scoring`; the files are written by :mod:`deepfakemae.predictions`:
``<output>/predictions.json`` and ``<output>/predictions.csv``; ``--explain`` also writes
``<output>/explain/<key>/{reconstruction,cam}.png`` (see :mod:`deepfakemae.explain`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from deepfakemae.branches import BRANCHES
from deepfakemae.faces.detect import DETECTORS, DetectorError, check_detector
from deepfakemae.faces.input_files import records_from_inputs
from deepfakemae.faces.landmarks import BACKENDS, LandmarkError
from deepfakemae.faces.pipeline import FaceConfig, FacePipeline
from deepfakemae.modules.checkpoints import CheckpointError, load_stage1_mae
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.predictions import print_table, write_predictions
from deepfakemae.scoring import Stage1, VideoScorer, explainer, score_videos


class UsageError(ValueError):
    """Bad arguments or missing checkpoints (exit code 2)."""


#: where ``make demo`` / ``deepfakemae demo`` leave the demo's models
DEMO_RUN_DIR = Path("runs") / "demo" / "main"


def run_dir(args: argparse.Namespace | None = None) -> Path:
    """``--run-dir``, else ``$RUN_DIR``, else ``runs`` -- where the stages wrote their
    checkpoints (``<run dir>/<stage>/checkpoints/last.ckpt``)."""
    given = getattr(args, "run_dir", None)
    return Path(given) if given is not None else Path(os.environ.get("RUN_DIR") or "runs")


def add_score_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``score --video`` options to ``parser``."""
    runs = "<run dir>"
    parser.add_argument("--video", "--input", dest="video", type=Path, required=True,
                        help="a video, a folder of videos and/or frame folders, or a .txt list")
    parser.add_argument("--run-dir", type=Path,
                        help="the training run whose models score the videos: its "
                             f"{', '.join(f'{n}/' for n in BRANCHES)} and pretrain/ checkpoints "
                             f"(default $RUN_DIR or runs; after `make demo`: {DEMO_RUN_DIR})")
    for name, kind in BRANCHES.items():
        parser.add_argument(f"--{name}-ckpt", type=Path,
                            help=f"{kind.title} checkpoint "
                                 f"(default {runs}/{name}/checkpoints/last.ckpt)")
    parser.add_argument("--branch", action="append", default=[], metavar="NAME=CKPT",
                        help="one more detector branch (any stage-2 checkpoint); repeatable")
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


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


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


STAGE2_FIX = ("train stage 2 first (`make train-stage2`, or "
              + " and ".join(f"`deepfakemae fit -c experiments/{n}.yaml`" for n in BRANCHES)
              + "), pass the run folder that holds them with --run-dir, or pass "
              + "/".join(f"--{n}-ckpt" for n in BRANCHES))


def load_detector(args: argparse.Namespace) -> DualNetworkDetector:
    """The fused detector from the branches' checkpoints; :class:`UsageError` naming a file."""
    branches = {name: str(_checkpoint(args, getattr(args, f"{name}_ckpt"), name, kind.title,
                                      STAGE2_FIX))
                for name, kind in BRANCHES.items()}
    for spec in args.branch:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in branches:
            raise UsageError(f"--branch {spec}: give NAME=CKPT with a new branch name")
        branches[name] = str(_checkpoint(args, Path(path), name, f"branch {name}", STAGE2_FIX))
    try:
        return DualNetworkDetector(branches=branches)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc


def load_explain_mae(args: argparse.Namespace, device: torch.device) -> Stage1 | None:
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


def run_score_command(args: argparse.Namespace) -> int:
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
    explain = None
    if args.explain:
        explain = explainer(scorer, args.output / "explain", load_explain_mae(args, device))
    from tqdm.auto import tqdm

    progress = tqdm(records, desc="scoring", unit="video",
                    disable=args.no_progress or len(records) < 2)
    predictions = score_videos(progress, scorer, pipeline, args.threshold, explain)
    json_path, csv_path = write_predictions(predictions, args.output)
    print_table(predictions)
    failed = [p for p in predictions if p.status != "ok"]
    for p in failed:
        print(f"  {p.key}: {p.status}: {p.error}", file=sys.stderr)
    print(f"wrote {json_path} and {csv_path}"
          + (f"; figures under {args.output / 'explain'}" if args.explain else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m deepfakemae.commands.score --video ...``."""
    parser = add_score_arguments(argparse.ArgumentParser(prog="deepfakemae score"))
    return run_score_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
