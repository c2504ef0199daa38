"""``deepfakemae preprocess``: arguments, input records and the command itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_modules.indexes import DatasetError, list_indexes, records_for_dataset
from deepfakemae.errors import UsageError, reports_errors
from deepfakemae.faces.align import DEFAULT_MARGIN
from deepfakemae.faces.cache import CacheError, FaceCache
from deepfakemae.faces.detect import add_face_detector_argument, check_face_detector
from deepfakemae.faces.input_files import scan_inputs
from deepfakemae.faces.landmarks import BACKENDS
from deepfakemae.faces.pipeline import FaceConfig
from deepfakemae.faces.runner import recorded_face_detector, run_preprocess
from deepfakemae.records import VideoRecord


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(p) for p in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}"
                                         ) from exc
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def add_preprocess_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``preprocess`` options to ``parser``."""
    parser.add_argument("--input", type=Path,
                        help="a video, a folder of videos and/or frame folders, or a .txt list")
    data = parser.add_argument_group("dataset mode (instead of --input)")
    data.add_argument("--dataset", choices=list_indexes(),
                      help="walk a dataset as downloaded and record its labels in the manifest")
    data.add_argument("--root", type=Path, help="the dataset's root folder")
    data.add_argument("--split", choices=("train", "val", "test", "all"), default="all")
    data.add_argument("--compression", choices=("raw", "c23", "c40"), help="ffpp (default c23)")
    data.add_argument("--methods", help="ffpp: comma-separated manipulation methods")
    data.add_argument("--splits-dir", type=Path, help="ffpp: folder with train/val/test.json")
    data.add_argument("--extract", action="store_true", default=None,
                      help="wilddeepfake: extract the .tar.gz archives (safely) first")
    data.add_argument("--allow-missing", action="store_true", default=None,
                      help="skip listed videos missing on disk instead of stopping")
    parser.add_argument("--output", type=Path, required=True, help="face cache folder")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--size", type=int, default=224, help="aligned crop side in pixels")
    parser.add_argument("--landmarks", choices=BACKENDS, default="dlib",
                        help="landmark backend (fan downloads its weights on first use)")
    parser.add_argument("--device", default="cpu", help="torch device for --landmarks fan")
    add_face_detector_argument(parser, None, help=(
        "dlib HOG with MTCNN on frames where it finds no face (dlib+mtcnn), dlib alone, or "
        "MTCNN alone (default: the one the --output cache was made with, else dlib+mtcnn)"))
    parser.add_argument("--detect-max-side", type=int, default=640,
                        help="longest side frames are downscaled to for face detection")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="background margin around the face, fraction of the crop side")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1),
                        help="process only shard i of n (i/n), for several machines")
    parser.add_argument("--retry-failed", action="store_true",
                        help="process inputs with a recorded failure again (by default only "
                             "'error' failures and inputs that changed since are retried)")
    parser.add_argument("--allow-mixed-settings", action="store_true",
                        help="add entries made with other --frames/--size/... to an existing "
                             "cache instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def records_for_args(args: argparse.Namespace) -> list[VideoRecord]:
    """The records the arguments select (``--input`` or ``--dataset``); raises :class:`UsageError`."""
    if getattr(args, "dataset", None):
        if args.input is not None or args.root is None:
            raise UsageError("--dataset needs --root (and no --input)")
        try:
            return records_for_dataset(
                args.dataset, args.root, split=args.split, compression=args.compression,
                methods=args.methods, splits_dir=args.splits_dir, extract=args.extract,
                allow_missing=args.allow_missing)
        except (DatasetError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    if args.input is None:
        raise UsageError("give --input (a video, a folder or a .txt list) or --dataset/--root")
    try:
        scan = scan_inputs(args.input, exclude=[args.output])  # never the cache itself
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    if scan.skipped:
        print(f"note: skipped {len(scan.skipped)} path(s) that are not videos or frame folders: "
              + ", ".join(f"{p} ({why})" for p, why in scan.skipped[:5])
              + (" ..." if len(scan.skipped) > 5 else ""), file=sys.stderr)
    return scan.records


def face_detector_of(output: Path) -> str:
    """The ``--face-detector`` an existing cache at ``output`` was made with (so that a rerun
    resumes it), else the default ``dlib+mtcnn``; raises :class:`UsageError`."""
    try:
        recorded = FaceCache(output).read_settings()
    except CacheError as exc:
        raise UsageError(str(exc)) from exc
    return recorded_face_detector(recorded) or "dlib+mtcnn"


def config_for_args(args: argparse.Namespace) -> FaceConfig:
    """The :class:`FaceConfig` the arguments describe; raises :class:`UsageError`."""
    face_detector = args.face_detector or face_detector_of(args.output)
    if args.frames < 1 or args.size < 16 or args.workers < 1:
        raise UsageError("--frames and --workers must be >= 1 and --size >= 16")
    if not 0 <= args.margin < 0.5:
        raise UsageError("--margin must be in [0, 0.5)")
    check_face_detector(face_detector)
    return FaceConfig(frames=args.frames, size=args.size, landmarks=args.landmarks,
                      device=args.device, detect_max_side=args.detect_max_side,
                      detector=face_detector, margin=args.margin)


@reports_errors("preprocess")
def run_preprocess_command(args: argparse.Namespace) -> int:
    """Run ``preprocess``; exit code 0 when the cache holds faces for every input of the shard,
    1 if any input failed (in this run or recorded by an earlier one and kept), 2 on usage."""
    records = records_for_args(args)
    config = config_for_args(args)
    summary = run_preprocess(records, args.output, config, workers=args.workers,
                             shard=args.shard, progress=not args.no_progress,
                             retry_failed=getattr(args, "retry_failed", False),
                             allow_mixed=getattr(args, "allow_mixed_settings", False))
    print(summary.format())
    print(f"face cache: {args.output} (manifest {Path(args.output) / 'manifest.jsonl'})")
    return 1 if summary.num_unusable else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m deepfakemae.commands.preprocess --input ... --output ...``."""
    parser = add_preprocess_arguments(argparse.ArgumentParser(prog="deepfakemae preprocess"))
    return run_preprocess_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
