"""``deepfakemae premise``: the paper's premise measured on a stage-1 checkpoint and a face cache
(the measurement is :mod:`deepfakemae.premise`; the protocol is in docs/DESIGN.md).

Writes, atomically and in UTF-8, under ``--output``: ``premise.md`` (the table and what it can
mean), ``premise.csv`` (one row per split × method × part), ``premise_videos.csv`` (one row per
video × part with its frame errors, so folds can be pooled: `pool_video_files`), ``premise.png``
(error distributions per part, real vs fake, per method) and a W&B run (offline unless logged
in; ``WANDB_MODE`` honoured). The demo calls `demo_premise` and `cv_premise`.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_modules.datasets import DatasetError, SourceSpec, VideoItem, select_videos
from deepfakemae.errors import DeepfakeMAEError, reports_errors
from deepfakemae.faces.cache import CacheError
from deepfakemae.faces.files import atomic_write
from deepfakemae.masking import PART_NAMES, stage1_masking
from deepfakemae.modules.checkpoints import check_checkpoint, load_stage1
from deepfakemae.premise import (
    PremiseRow,
    VideoError,
    measure,
    read_errors_csv_rows,
    summarise,
    unpaired_fakes,
)
from deepfakemae.records import FAKE, REAL, REAL_METHOD
from deepfakemae.rundir import last_checkpoint, stage_of_checkpoint
from deepfakemae.visualize import box_grid, png_bytes

FILES = ("premise.md", "premise.csv", "premise_videos.csv", "premise.png")
VIDEO_COLUMNS = ("split", "method", "video_key", "label", "part", "error", "num_frames",
                 "mask_key", "target", "frame_indices", "frame_errors")
ROW_COLUMNS = ("split", "method", "part", "num_real_videos", "num_fake_videos", "auc",
               "auc_low", "auc_high", "num_pairs", "share_fake_above", "share_low", "share_high",
               "mean_diff", "mean_diff_low", "mean_diff_high", "num_frame_pairs",
               "frame_share_fake_above", "frame_share_low", "frame_share_high")
MEANING = ("What these figures can mean: whether this stage-1 model reconstructs a masked part "
           "of these real faces better than the same part of their fakes (same frames, same "
           "patches), i.e. whether its reconstruction error carries a signal stage 2 could use. "
           "What they cannot: rows of the `train` split use identities stage 1 was trained on "
           "(their real faces are the fakes' target frames), so a gap there can be memorisation; "
           "only unseen identities (`val`, `test`) test the premise, and none of it says how "
           "well stage 2 detects.")


class PremiseError(DeepfakeMAEError, ValueError):
    """Inputs the measurement cannot use (the message names the file and the fix)."""


@dataclass
class Measurement:
    """What one `run_measurement` produced: the per-video errors and how they were made."""

    videos: list[VideoError]
    checkpoint: Path
    hparams: dict
    frames: int | None
    seconds: float


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_premise_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepfakemae premise``."""
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="stage-1 checkpoint (e.g. runs/demo/main/pretrain/checkpoints/"
                             "last.ckpt)")
    parser.add_argument("--cache", type=Path, required=True, help="face cache root")
    parser.add_argument("--dataset", default="ffpp",
                        help="manifest dataset to measure (default ffpp; the demo cache is ffpp)")
    parser.add_argument("--splits", default="test",
                        help="comma-separated splits, each reported on its own rows "
                             "(default test; e.g. train,test: seen vs unseen identities)")
    parser.add_argument("--splits-dir", type=Path,
                        help="FF++-format split files (train/val/test.json) that replace the "
                             "cache's splits (cross-validation folds)")
    parser.add_argument("--methods", help="comma-separated fake methods (default: all cached)")
    parser.add_argument("--frames", type=_positive, default=None,
                        help="frames per video, evenly spaced (default: every cached frame)")
    parser.add_argument("--output", type=Path,
                        help="folder for the files (default: premise/ beside the checkpoint's "
                             "checkpoints/ folder)")
    parser.add_argument("--bootstrap", type=_positive, default=2000, help="bootstrap resamples")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=_positive, default=64,
                        help="frames per forward pass")


def default_output(checkpoint: Path) -> Path:
    """``<stage dir>/premise`` for ``<stage dir>/checkpoints/x.ckpt``, else ``premise/`` beside
    the file."""
    return stage_of_checkpoint(checkpoint) / "premise"


def select(cache: Path, dataset: str | None, splits: Sequence[str],
           splits_dir: Path | None = None, methods: Sequence[str] | None = None
           ) -> list[VideoItem]:
    """The cached videos to measure: every real and the fakes of ``methods`` (None: all) of each
    split; a split without real or without fake videos is a `PremiseError` naming the cache."""
    videos: list[VideoItem] = []
    for split in splits:
        wanted = None if methods is None else [REAL_METHOD, *methods]
        try:
            items = select_videos(SourceSpec(f"premise/{split}", str(cache), dataset, split,
                                             wanted), splits_dir)
        except (DatasetError, CacheError) as exc:
            raise PremiseError(str(exc)) from exc
        labels = {v.label for v in items}
        if labels != {REAL, FAKE}:
            lacking = "real" if REAL not in labels else "fake"
            raise PremiseError(f"face cache {cache}: split {split!r} has no {lacking} video "
                               f"(dataset {dataset!r}); the measurement compares reals with "
                               "fakes: preprocess both, or pick other --splits")
        videos += items
    return videos


def run_measurement(checkpoint: Path, cache: Path, dataset: str | None = "ffpp",
                    splits: Sequence[str] = ("test",), splits_dir: Path | None = None,
                    methods: Sequence[str] | None = None, frames: int | None = None,
                    device: str = "cpu", batch_size: int = 64, progress: bool = True
                    ) -> Measurement:
    """Load the stage-1 MAE of ``checkpoint`` and measure every selected video of ``cache``."""
    check_checkpoint(checkpoint, "MAEPretrainModule", purpose="deepfakemae premise")
    mae, hparams = load_stage1(checkpoint)
    items = select(cache, dataset, splits, splits_dir, methods)
    start = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        def bar(it):
            return tqdm(it, total=len(items), desc="premise", unit="video", disable=None)
    videos = measure(mae, items, *stage1_masking(hparams), frames=frames, device=device,
                     batch_size=batch_size, progress=bar)
    return Measurement(videos, checkpoint, hparams, frames, time.time() - start)


def header(m: Measurement, n_boot: int, what: str = "") -> str:
    """The table's header: what was measured, how, and what it can mean."""
    hp = m.hparams
    frames = "every cached frame" if m.frames is None else f"{m.frames} evenly spaced frames"
    pooled = f" {what}" if what else ""
    ratio, variant = stage1_masking(hp)
    lines = [
        f"Premise{pooled}: masked-reconstruction error of the stage-1 model {m.checkpoint} "
        f"(trained with mask strategy {hp.get('mask_strategy', 'facial_part')}, ratio "
        f"{ratio} of the part, part variant {variant}) on {frames} per video. Each part is masked "
        "with that ratio; the patches are fixed per frame (drawn from the real target's "
        "landmarks at that frame, seeded by its key, the frame and the part), so a fake and the "
        "real it was made on get the same mask. Error: MSE on the masked patches in "
        "ImageNet-normalised units, a video's = the mean over its frames.",
        f"AUC %: the video error as a fake score, fake vs real, [95% bootstrap over videos, "
        f"{n_boot} resamples]. Pairs: each fake with its real target; fake > real: the share "
        "whose fake error exceeds its real's (%, videos; frames: every frame both have, "
        "bootstrap over video pairs); diff: the mean over pairs of fake − real.",
        MEANING,
    ]
    return "\n\n".join(lines)


def _fmt(iv, scale: float = 100.0, digits: int = 1) -> str:
    return iv.format(scale, digits)


def markdown_table(rows: Sequence[PremiseRow]) -> str:
    """One Markdown row per split × method × part."""
    head = ["split", "method", "part", "videos (real/fake)", "video AUC %", "pairs",
            "fake > real, videos %", "fake > real, frames %", "diff (fake − real)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.split, r.method, r.part, f"{r.num_real}/{r.num_fake}", _fmt(r.auc),
                 str(r.num_pairs), _fmt(r.share), _fmt(r.frame_share), _fmt(r.mean_diff, 1, 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_bytes(columns: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _num(x: float) -> str:
    return f"{x:.9g}"


def row_records(rows: Sequence[PremiseRow]) -> list[list]:
    """``premise.csv``'s rows (columns `ROW_COLUMNS`)."""
    out = []
    for r in rows:
        out.append([r.split, r.method, r.part, r.num_real, r.num_fake,
                    *(_num(x) for x in (r.auc.value, r.auc.low, r.auc.high)), r.num_pairs,
                    *(_num(x) for x in (r.share.value, r.share.low, r.share.high,
                                        r.mean_diff.value, r.mean_diff.low, r.mean_diff.high)),
                    r.num_frame_pairs,
                    *(_num(x) for x in (r.frame_share.value, r.frame_share.low,
                                        r.frame_share.high))])
    return out


def video_records(videos: Sequence[VideoError]) -> list[list]:
    """``premise_videos.csv``'s rows (columns `VIDEO_COLUMNS`)."""
    return [[v.split, v.method, v.key, v.label, v.part, _num(v.error), len(v.errors), v.mask_key,
             v.target or "", " ".join(str(int(f)) for f in v.frame_indices),
             " ".join(_num(e) for e in v.errors)] for v in videos]


def figure(videos: Sequence[VideoError], title: str = "") -> np.ndarray:
    """Video errors per part (rows) and method (columns): real vs fake boxes, per split."""
    splits = sorted({v.split for v in videos})
    methods = sorted({v.method for v in videos if v.label == FAKE})
    parts = [p for p in PART_NAMES if any(v.part == p for v in videos)]
    panels = {}
    for part in parts:
        for method in methods:
            boxes = {}
            for split in splits:
                tag = f"{split} " if len(splits) > 1 else ""
                boxes[f"{tag}real"] = [v.error for v in videos if v.split == split
                                       and v.part == part and v.label == REAL]
                boxes[f"{tag}fake"] = [v.error for v in videos if v.split == split
                                       and v.part == part and v.method == method]
            panels[(part, method)] = boxes
    return box_grid(panels, parts, methods, "masked MSE", title)


def log_wandb(rows: Sequence[PremiseRow], image: np.ndarray, output: Path, name: str,
              config: dict) -> Path | None:
    """One W&B run (job type ``premise``) with the table, each figure as a summary value and
    the figure; ``None`` under ``WANDB_MODE=disabled``. Returns the run folder."""
    from deepfakemae.loggers import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return None
    import wandb  # heavy: imported when a run is written

    run = wandb.init(project="deepfakemae", name=name, group=name, job_type="premise",
                     dir=str(output), mode=mode, config=config, reinit="finish_previous")
    run.log({"premise/results": wandb.Table(columns=list(ROW_COLUMNS), data=row_records(rows)),
             "premise/errors": wandb.Image(image)})
    for r in rows:
        prefix = f"premise/{r.split}/{r.method}/{r.part}"
        run.summary[f"{prefix}/video_auc"] = r.auc.value
        run.summary[f"{prefix}/share_fake_above"] = r.share.value
        run.summary[f"{prefix}/mean_diff"] = r.mean_diff.value
    folder = Path(run.dir).parent
    run.finish()
    return folder


def write_outputs(videos: Sequence[VideoError], output: Path, head: str, n_boot: int,
                  name: str = "premise", config: dict | None = None, wandb: bool = True
                  ) -> tuple[list[PremiseRow], str, Path | None]:
    """Summarise ``videos`` and write the four files (and, with ``wandb``, the W&B run) under
    ``output``.

    Returns the rows, the Markdown text (header + table) and the W&B run folder (or None)."""
    rows = summarise(videos, n_boot=n_boot)
    text = f"{head}\n\n{markdown_table(rows)}\n"
    missing = unpaired_fakes(videos)
    if missing:
        text += (f"\n{len(missing)} fake video(s) have no measured real target (e.g. "
                 f"{missing[0][0]} → {missing[0][1]}); they count in the AUC only.\n")
    output.mkdir(parents=True, exist_ok=True)
    image = figure(videos, f"{name}: masked-reconstruction error per video")
    for fname, data in (("premise.md", text.encode("utf-8")),
                        ("premise.csv", _csv_bytes(ROW_COLUMNS, row_records(rows))),
                        ("premise_videos.csv", _csv_bytes(VIDEO_COLUMNS, video_records(videos))),
                        ("premise.png", png_bytes(image))):
        atomic_write(output / fname, lambda h, d=data: h.write(d))
    wandb_dir = (log_wandb(rows, image, output, name, dict(config or {}, bootstrap=n_boot))
                 if wandb else None)
    return rows, text, wandb_dir


def pool_video_files(paths: Sequence[Path]) -> list[VideoError]:
    """The per-video rows of several ``premise_videos.csv`` files (folds), concatenated; a video
    measured twice for one split and part is an error (each must be tested once)."""
    videos: list[VideoError] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, path in enumerate(paths):
        if not path.is_file():
            raise PremiseError(f"{path} does not exist; run `deepfakemae premise` for that fold")
        with path.open(encoding="utf-8", newline="") as handle:
            found = read_errors_csv_rows(csv.DictReader(handle), path)
        for v in found:
            first = seen.setdefault((v.split, v.key, v.part), i)
            if first != i:
                raise PremiseError(f"{v.key} ({v.split}, {v.part}) is in both {paths[first]} "
                                   f"and {path}; pooled folds must test each video once")
        videos += found
    return videos


@reports_errors("premise")
def run_premise_command(args: argparse.Namespace) -> int:
    """``deepfakemae premise``: measure, write the files, print the table."""
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",")
                                                 if m.strip()]
    output = args.output or default_output(args.checkpoint)
    m = run_measurement(args.checkpoint, args.cache, args.dataset, splits, args.splits_dir,
                        methods, args.frames, args.device, args.batch_size)
    _, text, wandb_dir = write_outputs(
        m.videos, output, header(m, args.bootstrap), args.bootstrap,
        config={"checkpoint": str(args.checkpoint), "cache": str(args.cache),
                "splits": splits, "frames": args.frames, **_mask_config(m.hparams)})
    print(text)
    print(f"{_timing(m)}\nfiles: {', '.join(str(output / f) for f in FILES)}"
          + _wandb_line(wandb_dir))
    return 0


def _mask_config(hparams: dict) -> dict:
    return {k: hparams.get(k) for k in ("preset", "mask_strategy", "mask_ratio", "part_variant")}


def _timing(m: Measurement) -> str:
    frames = sum(len(v.errors) for v in m.videos)
    count = len({(v.split, v.key) for v in m.videos})
    parts = len({v.part for v in m.videos})
    return (f"measured {count} videos ({frames // max(parts, 1)} frames × {parts} parts = "
            f"{frames} masked reconstructions) in {m.seconds:.1f} s")


# ------------------------------------------------------------------------------------ the demo
def demo_premise(run_dir: Path, cache: Path, n_boot: int = 2000,
                 methods: Sequence[str] | None = None) -> str:
    """The premise table of a demo run (its stage-1 checkpoint, its test speakers; the fakes
    of ``methods``, default every cached method), written to ``<run dir>/premise``; returns the
    text to print."""
    checkpoint = last_checkpoint(run_dir / "pretrain")
    m = run_measurement(checkpoint, cache, splits=("test",), methods=methods, progress=False)
    _, text, wandb_dir = write_outputs(m.videos, run_dir / "premise", header(m, n_boot), n_boot,
                                       name=f"{run_dir.parent.name}/premise",
                                       config=_mask_config(m.hparams))
    return f"{text}\n{_timing(m)}; files: {run_dir / 'premise'}" + _wandb_line(wandb_dir)


def _wandb_line(folder: Path | None) -> str:
    return "" if folder is None else f"\nW&B run: {folder}"


def cv_premise(root: Path, splits_dirs: Sequence[Path], cache: Path, n_boot: int = 2000,
               methods: Sequence[str] | None = None) -> str:
    """Per fold ``i``: the premise of ``<root>/fold_i``'s stage 1 on that fold's test speakers
    and the fakes of ``methods`` (default every cached method; a demo method at an artifact
    strength, ``LipsSwap@s2``, gets rows of its own) in ``<root>/fold_i/premise``; then the
    per-video rows of all folds pooled (each video tested once) into
    ``<root>/premise.{md,csv,png}`` and ``premise_videos.csv``. Returns the text."""
    seconds, last = 0.0, None
    files = []
    for i, splits in enumerate(splits_dirs):
        fold = root / f"fold_{i}"
        m = run_measurement(last_checkpoint(fold / "pretrain"), cache,
                            splits=("test",), splits_dir=splits, methods=methods,
                            progress=False)
        write_outputs(m.videos, fold / "premise", header(m, n_boot), n_boot,
                      name=f"{root.name}/fold_{i}/premise", wandb=False)
        files.append(fold / "premise" / "premise_videos.csv")
        seconds, last = seconds + m.seconds, m
    pooled = Measurement(pool_video_files(files), last_checkpoint(root / "fold_*" / "pretrain"),
                         last.hparams, None, seconds)
    what = (f"of {len(files)} identity-disjoint folds pooled (each fold's own stage 1 on its "
            "test speakers; every video tested once; the pooled AUC assumes the folds' error "
            "scales agree, the pairs compare within a fold; each fold's own table: "
            "fold_<i>/premise/premise.md)")
    _, text, wandb_dir = write_outputs(pooled.videos, root, header(pooled, n_boot, what), n_boot,
                                       name=f"{root.name}/premise",
                                       config=_mask_config(last.hparams))
    return (f"{text}\n{_timing(pooled)} (all folds); files: {root / 'premise.md'}"
            + _wandb_line(wandb_dir))
