"""``deepfakemae score --video ...`` (old spelling ``predict --video``): score videos end to end
with the stage-2 checkpoints of a run folder (``--run-dir``, default ``$RUN_DIR`` or ``runs``).

Scoring is :mod:`deepfakemae.scoring`; the files are written by :mod:`deepfakemae.predictions`:
``<output>/predictions.json`` and ``<output>/predictions.csv``; ``--explain`` also writes
``<output>/explain/<key>/{reconstruction,cam}.png`` (see :mod:`deepfakemae.explain`);
``--report PAGE`` also writes ``<output>/faces/<key>.png`` (the faces scored) and, at the end or
on Ctrl-C, the page ``PAGE`` rebuilt from the whole folder (:mod:`deepfakemae.score_report`).

``--output`` is checked before anything is scored, the files are rewritten atomically as videos
finish (Ctrl-C or a crash keeps the finished ones), and a rerun into the same ``--output`` skips
the videos already there (``--rescore`` scores them again; with ``--explain`` or ``--report``
also those whose figures or face strip are missing); ``<output>/score.json`` records the
settings they were scored with, and a rerun with other ones is refused. The output folder (and
any folder ``score`` wrote) is never taken as an input. One scorer at a time per ``--output``
(``<output>/.score.lock``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from deepfakemae.branches import BRANCHES, FUSED
from deepfakemae.errors import UsageError, reports_errors
from deepfakemae.faces.detect import add_face_detector_argument, check_face_detector
from deepfakemae.faces.files import atomic_write, fs_text
from deepfakemae.faces.input_files import scan_inputs
from deepfakemae.faces.landmarks import BACKENDS
from deepfakemae.faces.pipeline import FaceConfig, FacePipeline
from deepfakemae.masking import stage1_masking
from deepfakemae.modules.checkpoints import CheckpointError, load_stage1_mae
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.predictions import JSON_NAME, PredictionsFile, print_table, read_predictions
from deepfakemae.records import VideoRecord
from deepfakemae.rundir import last_checkpoint
from deepfakemae.runinfo import run_info
from deepfakemae.score_report import EXPLAIN_DIR, figure_paths, save_face_strip, write_report
from deepfakemae.scoring import Stage1, VideoPrediction, VideoScorer, explainer, iter_scores

#: where ``make demo`` / ``deepfakemae demo`` leave the demo's models
DEMO_RUN_DIR = Path("runs") / "demo" / "main"
#: the settings record and the lock file of an ``--output`` folder
SETTINGS_NAME, LOCK_NAME = "score.json", ".score.lock"
#: statuses of earlier predictions a rerun scores again (their cause may have gone away)
RETRIED_STATUSES = ("error",)


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
                                 f"(default {last_checkpoint(f'{runs}/{name}')})")
    parser.add_argument("--branch", action="append", default=[], metavar="NAME=CKPT",
                        help="one more detector branch (any stage-2 checkpoint); repeatable")
    parser.add_argument("--mae-ckpt", type=Path,
                        help=f"stage-1 MAE checkpoint, for --explain reconstructions "
                             f"(default {last_checkpoint(f'{runs}/pretrain')})")
    parser.add_argument("--output", type=Path, default=Path("predictions"),
                        help="folder for predictions.json/.csv and explain/ (default predictions)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--crop-size", type=int,
                        help="side of the aligned face crop before resizing to the model's input "
                             "(default: the model's input size; use the preprocess --size the "
                             "training cache was built with to mirror training exactly)")
    parser.add_argument("--landmarks", choices=BACKENDS, default="dlib", help="landmark backend")
    add_face_detector_argument(parser, "dlib+mtcnn", help=(
        "dlib HOG with MTCNN on frames where it finds no face (default), dlib alone, or MTCNN "
        "alone"))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=8, help="5-frame clips per forward pass")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="fused probability at or above which a video is labelled fake")
    parser.add_argument("--explain", action="store_true",
                        help="save facial-part reconstructions and class-activation maps as PNGs")
    parser.add_argument("--report", type=Path, metavar="PAGE.html",
                        help="also write one self-contained HTML page of every video in "
                             "--output: verdicts, models, per-frame scores, the faces scored "
                             "and (with --explain) the figures")
    parser.add_argument("--rescore", action="store_true",
                        help="score again the videos --output already holds predictions of "
                             "(by default a rerun skips them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; other names as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: not a torch device; use cpu, cuda, cuda:N or "
                         "auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


def _checkpoint(args: argparse.Namespace, given: Path | None, stage: str, what: str,
                fix: str) -> Path:
    """The checkpoint file to load for ``stage``; :class:`UsageError` naming it otherwise (and
    the ``--run-dir`` of the demo's models when they exist and were not asked for)."""
    path = given if given is not None else last_checkpoint(run_dir(args) / stage)
    if path.is_dir():
        raise UsageError(f"{what} checkpoint {path} is a folder, not a checkpoint file; pass "
                         f"the .ckpt file inside it (e.g. {last_checkpoint(path)})")
    if not path.is_file():
        demo = last_checkpoint(DEMO_RUN_DIR / stage)
        if given is None and run_dir(args) != DEMO_RUN_DIR and demo.is_file():
            fix = (f"to score with the demo's models: `deepfakemae score --video {args.video} "
                   f"--run-dir {DEMO_RUN_DIR}`; otherwise {fix}")
        raise UsageError(f"{what} checkpoint {path} does not exist; {fix}")
    return path


STAGE2_FIX = ("train stage 2 first (`make train-stage2`, or "
              + " and ".join(f"`deepfakemae fit -c experiments/{n}.yaml`" for n in BRANCHES)
              + "), pass the run folder that holds them with --run-dir, or pass "
              + "/".join(f"--{n}-ckpt" for n in BRANCHES))


def extra_branches(specs: list[str]) -> dict[str, Path]:
    """``--branch NAME=CKPT`` options -> ``{NAME: CKPT}``; :class:`UsageError` for a spec
    without ``=``, an empty part, or a name (or label) already taken."""
    taken = {FUSED, *BRANCHES, *(kind.label for kind in BRANCHES.values())}
    branches: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise UsageError(f"--branch {spec!r}: give NAME=CKPT (e.g. --branch "
                             "X=runs/other/checkpoints/last.ckpt)")
        if name in taken or name in branches:
            raise UsageError(f"--branch {spec!r}: the name {name!r} is taken (by "
                             f"{', '.join(sorted(taken | set(branches)))}); pick another")
        branches[name] = Path(path)
    return branches


def load_detector(args: argparse.Namespace) -> DualNetworkDetector:
    """The fused detector from the branches' checkpoints; :class:`UsageError` naming a file."""
    branches = {name: str(_checkpoint(args, getattr(args, f"{name}_ckpt"), name, kind.title,
                                      STAGE2_FIX))
                for name, kind in BRANCHES.items()}
    for name, path in extra_branches(args.branch).items():
        branches[name] = str(_checkpoint(args, path, name, f"branch {name}", STAGE2_FIX))
    try:
        detector = DualNetworkDetector(branches=branches)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from exc
    detector.checkpoints = branches  # what score.json records
    return detector


def load_explain_mae(args: argparse.Namespace, device: torch.device) -> Stage1 | None:
    """``(mae, ratio, variant)`` for the reconstruction figure, or ``None`` with a note printed
    when the stage-1 checkpoint is missing or unusable (the cam figure is still drawn)."""
    path = args.mae_ckpt if args.mae_ckpt is not None else (
        last_checkpoint(run_dir(args) / "pretrain"))
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
    return (mae, *stage1_masking(hparams))


def _check_writable(option: str, path: Path, kind: str) -> None:
    """:class:`UsageError` unless the nearest existing folder of ``path`` (a ``kind`` to be
    created there, or replaced) is a folder this process can write to."""
    existing = path if kind == "folder" else path.parent
    while not existing.exists():  # the folder that will hold the new ones
        if existing.is_symlink():
            raise UsageError(f"{option} {path}: {existing} is a dangling symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable; pass a {kind} you "
                         "can write to")


def check_output(output: Path) -> Path:
    """``output`` if ``score`` can write its files there (it is created later, when the
    models have loaded); :class:`UsageError` for a file, or a folder that cannot be written."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; pass a folder (predictions.json and "
                         "predictions.csv are written inside it)")
    _check_writable("--output", output, "folder")
    return output


def check_report(page: Path | None) -> Path | None:
    """``--report`` if the page can be written there; :class:`UsageError` for a folder or a
    place that cannot be written."""
    if page is None:
        return None
    if page.is_dir():
        raise UsageError(f"--report {page} is a folder; pass the HTML file to write (e.g. "
                         f"{page / 'report.html'})")
    _check_writable("--report", page, "file")
    return page


def score_settings(args: argparse.Namespace, detector: DualNetworkDetector,
                   size: int) -> dict:
    """What the scores of a run depend on: each branch's checkpoint (path, size, time), the
    frames sampled, the crop size, the landmark backend and the face detector (not the
    threshold: kept predictions are relabelled)."""
    checkpoints = {}
    for name, path in detector.checkpoints.items():
        st = os.stat(path)
        checkpoints[name] = {"path": os.path.abspath(path), "bytes": st.st_size,
                             "mtime_ns": st.st_mtime_ns}
    return {"checkpoints": checkpoints, "frames": args.frames, "crop_size": size,
            "landmarks": args.landmarks, "detector": args.face_detector}


def earlier_predictions(output: Path, settings: dict, rescore: bool
                        ) -> dict[str, VideoPrediction]:
    """The predictions ``output`` already holds (none with ``rescore``); :class:`UsageError`
    when they cannot be read or were made with other settings."""
    json_path, settings_path = output / JSON_NAME, output / SETTINGS_NAME
    if rescore or not json_path.exists():
        return {}
    fix = "pass --rescore to score everything again (they are replaced), or another --output"
    try:
        earlier = read_predictions(json_path)
    except ValueError as exc:
        raise UsageError(f"{exc}; {fix}") from exc
    try:
        recorded = json.loads(settings_path.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{settings_path} is missing or unreadable ({type(exc).__name__}), so "
                         f"the predictions in {json_path} cannot be checked; {fix}") from exc
    if recorded != settings:
        diff = ", ".join(f"{k} {recorded.get(k)!r} (earlier) vs {settings.get(k)!r} (now)"
                         for k in sorted(set(recorded) | set(settings))
                         if recorded.get(k) != settings.get(k))
        raise UsageError(f"the predictions in {json_path} were made with other settings: "
                         f"{diff}; {fix}")
    for p in earlier:  # spelt as the scan spells them (under LC_ALL=C a file name's
        # non-ASCII bytes are lone surrogates there; predictions.json holds the text they spell)
        p.key, p.path = fs_text(p.key), fs_text(p.path)
    return {p.key: p for p in earlier}


def reusable(prediction: VideoPrediction | None, record: VideoRecord, explain: bool,
             strip_in: Path | None = None) -> bool:
    """True when an earlier ``prediction`` stands for ``record`` (same path, not a transient
    failure, with its figures when ``--explain`` asks for them and, given ``strip_in`` (the
    output folder of ``--report``), with its face strip there)."""
    if prediction is None or prediction.path != record.path or \
            prediction.status in RETRIED_STATUSES:
        return False
    if prediction.status != "ok":
        return True
    return not (explain and not prediction.explain) and not (
        strip_in is not None and not figure_paths(strip_in, prediction.key)["faces"].is_file())


@contextmanager
def locked(output: Path) -> Iterator[None]:
    """Hold ``<output>/.score.lock`` (released when the process ends, also on kill -9);
    :class:`UsageError` while another scorer holds it."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        handle = open(output / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 - held
    except OSError as exc:
        raise UsageError(f"--output {output}: cannot write there ({exc.strerror})") from exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UsageError(f"--output {output} is in use by another `deepfakemae score`; "
                             "wait for it to finish or pass another --output") from exc
        yield
    finally:
        handle.close()


def report_skipped(skipped: list[tuple[Path, str]], shown: int = 10) -> None:
    """List the input paths that are not scored (on stderr)."""
    if not skipped:
        return
    print(f"note: skipped {len(skipped)} path(s) that are not videos or frame folders:",
          file=sys.stderr)
    for path, why in skipped[:shown]:
        print(f"  {path}: {why}", file=sys.stderr)
    if len(skipped) > shown:
        print(f"  ... and {len(skipped) - shown} more", file=sys.stderr)


@reports_errors("score")
def run_score_command(args: argparse.Namespace) -> int:
    """Run ``score --video``: 0 when every video was scored, 1 if some were not, 2 on usage,
    130 when interrupted (the finished videos are kept; a rerun goes on from there)."""
    if args.frames < 1 or args.batch_size < 1:
        raise UsageError("--frames and --batch-size must be >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must be in [0, 1]")
    device = resolve_device(args.device)
    extra_branches(args.branch)
    check_output(args.output)
    check_report(args.report)
    try:
        scan = scan_inputs(args.video, exclude=[args.output, *filter(None, [args.report])])
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    check_face_detector(args.face_detector)
    scorer = VideoScorer(load_detector(args), device, args.batch_size)
    size = args.crop_size or scorer.img_size
    if size < 16:
        raise UsageError("--crop-size must be >= 16")
    pipeline = FacePipeline(FaceConfig(frames=args.frames, size=size,
                                       landmarks=args.landmarks, device=str(device),
                                       detector=args.face_detector))
    settings = score_settings(args, scorer.detector, size)
    with locked(args.output):
        earlier = earlier_predictions(args.output, settings, args.rescore)
        return _score(args, scan.records, scan.skipped, scorer, pipeline, settings, earlier,
                      device)


def _score(args: argparse.Namespace, records: list[VideoRecord], skipped: list[tuple[Path, str]],
           scorer: VideoScorer, pipeline: FacePipeline, settings: dict,
           earlier: dict[str, VideoPrediction], device: torch.device) -> int:
    """Score the records ``earlier`` does not hold, writing the files as they finish."""
    report_skipped(skipped)
    strip_in = args.output if args.report is not None else None
    todo = [r for r in records if not reusable(earlier.get(r.key), r, args.explain, strip_in)]
    results = PredictionsFile(args.output, [r.key for r in records],
                              {k: p.relabelled(args.threshold) for k, p in earlier.items()})
    results.flush()  # first: predictions of other settings (--rescore) never sit under these
    data = json.dumps({"settings": settings}, indent=2) + "\n"
    atomic_write(args.output / SETTINGS_NAME, lambda h: h.write(data.encode("utf-8")))
    if len(todo) < len(records):
        print(f"note: {len(records) - len(todo)} of {len(records)} videos already scored in "
              f"{args.output} (kept; --rescore scores them again)", file=sys.stderr)
    explain = None
    if args.explain and todo:
        explain = explainer(scorer, args.output / EXPLAIN_DIR, load_explain_mae(args, device))

    def keep_faces(crops, prediction: VideoPrediction) -> None:
        save_face_strip(args.output, crops, prediction)

    from tqdm.auto import tqdm

    progress = tqdm(todo, desc="scoring", unit="video",
                    disable=args.no_progress or len(todo) < 2)
    done, interrupted = 0, False
    try:
        for prediction in iter_scores(progress, scorer, pipeline, args.threshold, explain,
                                      keep_faces if args.report is not None else None):
            results.add(prediction)
            done += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:  # also on a crash: what was scored is kept
        progress.close()
        json_path, csv_path = results.flush()
    report = None
    if args.report is not None:  # also after Ctrl-C: a page of what was finished
        report = write_report(args.report, args.output, args.threshold, run_info(),
                              [(str(path), why) for path, why in skipped])
    if interrupted:
        print(f"\ninterrupted: {done} of {len(todo)} videos scored and kept in {json_path}"
              + (f" (and in {report})" if report else "")
              + "; rerun the same command to score the rest", file=sys.stderr)
        return 130
    mine = [results.predictions[r.key] for r in records]
    print_table(mine)
    failed = [p for p in mine if p.status != "ok"]
    for p in mine:
        if p.status != "ok" or p.note:
            print(f"  {p.key}: {p.status}: {p.error or p.note}", file=sys.stderr)
    others = len(results.predictions) - len(mine)
    print(f"wrote {json_path} and {csv_path}"
          + (f" (also holding {others} earlier predictions of other inputs)" if others else "")
          + (f"; figures under {args.output / EXPLAIN_DIR}" if args.explain else "")
          + (f"; report {report}" if report else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m deepfakemae.commands.score --video ...``."""
    parser = add_score_arguments(argparse.ArgumentParser(prog="deepfakemae score"))
    return run_score_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
