"""Frame scores → exact frame- and video-level metrics per named test set, under DDP too.

Every evaluation sample carries its ``video_key`` and ``frame_index``. Scores are kept per
``(test set, video key, frame index)``; at epoch end they are gathered from every rank with
``all_gather_object`` and de-duplicated on that triple, which removes the samples that
``DistributedSampler`` repeats to even out the ranks. Metrics are then exactly those of a
single-process run.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from deepfakemae.loggers import log_wandb_results
from deepfakemae.metrics import compute_metrics, roc_curve, video_level
from deepfakemae.visualize import log_image, roc_figure


@dataclass
class ScoredSet:
    """De-duplicated scores of one test set: frame rows and per-branch fake probabilities."""

    keys: list[str]
    frames: np.ndarray  # (N,) frame indices
    labels: np.ndarray  # (N,) 0 real / 1 fake
    scores: dict[str, np.ndarray]  # branch -> (N,) fake probability


class ScoreBook:
    """Accumulates fake probabilities of evaluation frames for several named test sets.

    A row is one face crop, identified by ``(video key, window start, frame index)``: a frame
    scored inside a clip carries the clip's first frame index as window start (a frame may sit in
    two overlapping evaluation windows; both are kept, exactly as in a single-process run).
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple[str, int, int], tuple[int, dict[str, float]]]] = \
            defaultdict(dict)

    def reset(self) -> None:
        self._rows.clear()

    def add_batch(self, batch: dict, scores: dict[str, torch.Tensor],
                  default_set: str = "test") -> None:
        """Record a batch's per-frame scores.

        ``scores`` maps a branch name to fake probabilities of shape (B,) (one per sample) or
        (B, T) (one per frame of a clip); a (B,) score of a clip sample is given to its T frames.
        """
        frames = batch["frame_index"]
        frames = frames[:, None] if frames.ndim == 1 else frames  # (B, T)
        b, t = frames.shape
        starts = frames[:, :1].expand(b, t)
        cols = {}
        for name, value in scores.items():
            value = value.detach().float()
            cols[name] = (value[:, None].expand(b, t) if value.ndim == 1 else value).reshape(-1)
        sets = batch.get("test_set") or [default_set] * b
        keys = [k for k in batch["video_key"] for _ in range(t)]
        names = [n for n in sets for _ in range(t)]
        labels = batch["label"][:, None].expand(b, t).reshape(-1).tolist()
        starts_l, frames_l = starts.reshape(-1).tolist(), frames.reshape(-1).tolist()
        cols_l = {n: c.cpu().tolist() for n, c in cols.items()}
        for i, key in enumerate(keys):
            self._rows[names[i]][(key, int(starts_l[i]), int(frames_l[i]))] = (
                int(labels[i]), {n: c[i] for n, c in cols_l.items()})

    def gather(self) -> dict[str, ScoredSet]:
        """All ranks' rows, de-duplicated on (video key, frame index), per test set."""
        local = {name: dict(rows) for name, rows in self._rows.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, local)
        else:
            parts = [local]
        merged: dict[str, dict] = defaultdict(dict)
        for part in parts:
            for name, rows in part.items():
                merged[name].update(rows)
        out = {}
        for name in sorted(merged):
            items = sorted(merged[name].items())
            branches = sorted(items[0][1][1]) if items else []
            out[name] = ScoredSet(
                keys=[k for (k, _, _), _ in items],
                frames=np.array([f for (_, _, f), _ in items], dtype=np.int64),
                labels=np.array([lab for _, (lab, _) in items], dtype=np.int64),
                scores={b: np.array([s[b] for _, (_, s) in items], dtype=np.float64)
                        for b in branches},
            )
        return out


SCORE_COLUMNS = ("test_set", "video_key", "frame_index", "label")


def write_scores_csv(scored: dict[str, ScoredSet], path: str | Path) -> Path:
    """One row per scored frame: test set, video key, frame index, label, one column per branch
    (fake probability). Written atomically; read back with :func:`read_scores_csv`."""
    path = Path(path)
    branches = sorted({b for rows in scored.values() for b in rows.scores})
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*SCORE_COLUMNS, *branches])
        for name, rows in scored.items():
            for i, key in enumerate(rows.keys):
                writer.writerow([name, key, int(rows.frames[i]), int(rows.labels[i]),
                                 *(f"{rows.scores[b][i]:.6g}" for b in branches)])
    tmp.replace(path)
    return path


def read_scores_csv(path: str | Path) -> dict[str, ScoredSet]:
    """The test sets of a ``scores_test.csv`` written by :func:`write_scores_csv`."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if list(fields[:len(SCORE_COLUMNS)]) != list(SCORE_COLUMNS):
            raise ValueError(f"{path} is not a scores file (columns {fields}); it is written by "
                             "`deepfakemae test` as <run dir>/scores_test.csv")
        branches = fields[len(SCORE_COLUMNS):]
        rows: dict[str, list[dict]] = defaultdict(list)
        for row in reader:
            rows[row["test_set"]].append(row)
    return {name: ScoredSet(
        keys=[r["video_key"] for r in items],
        frames=np.array([int(r["frame_index"]) for r in items], dtype=np.int64),
        labels=np.array([int(r["label"]) for r in items], dtype=np.int64),
        scores={b: np.array([float(r[b]) for r in items]) for b in branches})
        for name, items in rows.items()}


def set_metrics(scored: ScoredSet) -> tuple[dict[str, float], dict[str, tuple]]:
    """Metrics of one test set for every branch, at frame and video level.

    Returns ``(metrics, curves)``: metric names are ``<branch>/<level>_<metric>`` plus the
    headline ``<branch>/auc`` (video level, the paper's tables' unit), and curves hold video-level
    ROC points ``(fpr, tpr, auc)`` per branch.
    """
    metrics: dict[str, float] = {}
    curves: dict[str, tuple] = {}
    labels = torch.as_tensor(scored.labels)
    for branch, frame_scores in scored.scores.items():
        scores = torch.as_tensor(frame_scores)
        for name, value in compute_metrics(scores, labels).items():
            metrics[f"{branch}/frame_{name}"] = value
        v_scores, v_labels, _ = video_level(scores, labels, scored.keys)
        for name, value in compute_metrics(v_scores, v_labels).items():
            metrics[f"{branch}/video_{name}"] = value
        metrics[f"{branch}/auc"] = metrics[f"{branch}/video_auc"]
        if not math.isnan(metrics[f"{branch}/video_auc"]):  # both classes present
            fpr, tpr, _ = roc_curve(v_scores, v_labels)
            curves[branch] = (fpr, tpr, metrics[f"{branch}/video_auc"])
    metrics["num_frames"] = float(len(scored.keys))
    metrics["num_videos"] = float(len(set(scored.keys)))
    return metrics, curves


#: the order branches are shown in (others follow alphabetically)
BRANCH_ORDER = ("fused", "F", "M")


def summary_table(results: dict[str, dict[str, float]], path: Path) -> str:
    """A short Markdown summary of a test: video-level AUC per test set and branch, the number
    of videos, and where the full results are."""
    found = {k.rsplit("/", 1)[0] for m in results.values() for k in m if k.endswith("/auc")}
    branches = [b for b in BRANCH_ORDER if b in found] + sorted(found - set(BRANCH_ORDER))
    lines = ["| test set | " + " | ".join(f"{b} AUC" for b in branches) + " | videos |",
             "|---|" + "---|" * (len(branches) + 1)]
    for name, metrics in sorted(results.items()):
        cells = [f"{metrics.get(f'{b}/auc', float('nan')):.4f}" for b in branches]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {int(metrics.get('num_videos', 0))} |")
    return "\n".join(["", *lines, f"full results (every metric, frame and video level): {path}",
                      f"per-frame scores: {path.with_name('scores_test.csv')}"])


class VideoEvaluation:
    """LightningModule mixin: per-frame fake probabilities → metrics per named test set.

    A module defines ``score_batch(batch) -> {branch: probabilities}`` and ``primary_branch``.
    Logged names: ``<stage>/<set>/auc`` (video level, primary branch), ``<stage>/<set>/frame_auc``
    and ``video_*`` for AUC/AP/EER/ACC, and ``<stage>/<set>/<branch>/...`` for other branches.
    At test end, ROC curves are logged as a figure and every number lands in
    ``<default_root_dir>/results_test.json`` (read by ``deepfakemae run``/``report``/``demo``).
    """

    primary_branch: str = "score"

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def score_book(self) -> ScoreBook:
        if not hasattr(self, "_score_book"):
            self._score_book = ScoreBook()
        return self._score_book

    def _eval_step(self, batch: dict, stage: str) -> None:
        with torch.no_grad():
            self.score_book.add_batch(batch, self.score_batch(batch), default_set=stage)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self.score_book.reset()

    def on_test_epoch_start(self) -> None:
        self.score_book.reset()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> dict[str, dict[str, float]]:
        scored = self.score_book.gather()  # every rank gets every row: identical numbers
        results: dict[str, dict[str, float]] = {}
        curves_by_set = {}
        for set_name, rows in scored.items():
            metrics, curves = set_metrics(rows)
            results[set_name] = metrics
            curves_by_set[set_name] = curves
            for name, value in metrics.items():
                branch, _, metric = name.rpartition("/")
                shown = metric if branch in ("", self.primary_branch) else name
                if not math.isnan(value):
                    self.log(f"{stage}/{set_name}/{shown}", value, sync_dist=False)
        self.score_book.reset()
        self.eval_results = getattr(self, "eval_results", {})
        self.eval_results[stage] = results
        trainer = self.trainer
        if stage == "test" and trainer is not None and trainer.is_global_zero and results:
            # the run folder itself (RUN_DIR/<stage> in the configs), whatever the logger
            out = Path(trainer.default_root_dir) / "results_test.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_scores_csv(scored, out.with_name("scores_test.csv"))
            out.write_text(json.dumps(results, indent=2, sort_keys=True))  # last: marks done
            plotted = {f"{s}/{b}": c for s, cs in curves_by_set.items() for b, c in cs.items()
                       if not math.isnan(c[2])}
            if plotted:
                log_image(trainer, "test/roc", roc_figure(plotted), trainer.global_step)
            log_wandb_results(trainer, results, curves_by_set)
            print(summary_table(results, out), flush=True)
        return results
