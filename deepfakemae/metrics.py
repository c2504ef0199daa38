"""Detection metrics (AUC, AP, EER, ACC@0.5), video-level aggregation, bootstrap intervals and
the one evaluation path: :class:`ScoreBook` (DDP-exact per-frame scores) → :func:`set_metrics`.

Scores are "probability of fake" in [0, 1] (label 1 = fake). torchmetrics treats float inputs outside
[0, 1] as logits and applies a sigmoid, so raw logits also work (AUC/AP/EER are unchanged by that
monotone map, ACC@0.5 becomes "logit > 0").

DDP: ``DistributedSampler`` pads the last batch by repeating samples. :class:`ScoreBook` keys every
score by ``(test set, video key, window start, frame index)``; :meth:`ScoreBook.gather` collects
all ranks' rows with ``all_gather_object``, de-duplicates on that key, giving exactly the
single-process result, then averages a frame's overlapping windows into one row.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryROC,
)

KeyLike = Sequence[str] | Tensor


# --------------------------------------------------------------------------------------------- frame metrics
def _as_1d(x: Any, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(x).detach().cpu().to(dtype)
    return t.reshape(-1)


def _check(scores: Tensor, labels: Tensor) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"metrics.py: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ")
    if scores.numel() == 0:
        raise ValueError("metrics.py: no scores to evaluate (empty split or nothing collected)")
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.numel():
        raise ValueError(f"metrics.py: labels must be 0 (real) / 1 (fake), found {bad[:5].tolist()}")


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` as numpy arrays (fpr ascending), for plots and EER."""
    s, y = _as_1d(scores, torch.float32), _as_1d(labels, torch.long)
    _check(s, y)
    fpr, tpr, thr = BinaryROC(thresholds=None)(s, y)
    return fpr.numpy(), tpr.numpy(), thr.numpy()


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: the point where FPR = FNR (= 1 - TPR), linearly interpolated on the ROC."""
    d = fpr - (1.0 - tpr)  # rises from -1 at (0,0) to +1 at (1,1)
    idx = int(np.argmax(d >= 0))
    if d[idx] == 0 or idx == 0:
        return float(fpr[idx])
    d0, d1 = d[idx - 1], d[idx]
    t = -d0 / (d1 - d0)
    return float(fpr[idx - 1] + t * (fpr[idx] - fpr[idx - 1]))


def compute_metrics(scores: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """``{"auc", "ap", "eer", "acc"}`` of fake-probability scores (N,) against 0/1 labels (N,).

    With a single class present AUC, AP and EER are undefined and reported as NaN (ACC is kept).
    Non-finite scores (a diverged model) make every metric NaN, with a warning, rather than a
    number that looks like a result.
    """
    s, y = _as_1d(scores, torch.float32), _as_1d(labels, torch.long)
    _check(s, y)
    bad = int((~torch.isfinite(s)).sum())
    if bad:
        warnings.warn(f"{bad} of {s.numel()} scores are not finite (NaN/inf): the model "
                      "diverged; metrics are NaN. Lower the learning rate and retrain.",
                      RuntimeWarning, stacklevel=2)
        return {"auc": math.nan, "ap": math.nan, "eer": math.nan, "acc": math.nan}
    acc = BinaryAccuracy(threshold=threshold)(s, y).item()
    if y.min() == y.max():
        return {"auc": math.nan, "ap": math.nan, "eer": math.nan, "acc": acc}
    fpr, tpr, _ = roc_curve(s, y)
    return {
        "auc": BinaryAUROC(thresholds=None)(s, y).item(),
        "ap": BinaryAveragePrecision(thresholds=None)(s, y).item(),
        "eer": eer_from_roc(fpr, tpr),
        "acc": acc,
    }


# --------------------------------------------------------------------------------------------- video level
def _key_list(keys: KeyLike) -> list[Any]:
    return keys.reshape(-1).tolist() if isinstance(keys, Tensor) else list(keys)


def video_level(scores: Any, labels: Any, video_keys: KeyLike) -> tuple[Tensor, Tensor, list[Any]]:
    """Mean of each video's frame (or clip) scores.

    Returns ``(video_scores (V,), video_labels (V,), keys)`` with videos in order of first
    appearance. Raises ``ValueError`` if a video's frames carry different labels.
    """
    s, y = _as_1d(scores, torch.float64), _as_1d(labels, torch.long)
    keys = _key_list(video_keys)
    if len(keys) != s.numel() or y.numel() != s.numel():
        raise ValueError(
            f"metrics.py video_level: {s.numel()} scores, {y.numel()} labels, {len(keys)} keys"
        )
    index: dict[Any, int] = {}
    inverse = torch.empty(len(keys), dtype=torch.long)
    for i, k in enumerate(keys):
        inverse[i] = index.setdefault(k, len(index))
    v = len(index)
    sums = torch.zeros(v, dtype=torch.float64).index_add_(0, inverse, s)
    counts = torch.zeros(v, dtype=torch.float64).index_add_(0, inverse, torch.ones_like(s))
    lab_min = torch.full((v,), 2, dtype=torch.long).scatter_reduce_(0, inverse, y, "amin")
    lab_max = torch.full((v,), -1, dtype=torch.long).scatter_reduce_(0, inverse, y, "amax")
    if (lab_min != lab_max).any():
        bad = [k for k, i in index.items() if lab_min[i] != lab_max[i]][:5]
        raise ValueError(f"metrics.py video_level: frames of one video carry different labels: {bad}")
    return (sums / counts).float(), lab_min, list(index.keys())


# --------------------------------------------------------------------------------------------- intervals
def weighted_auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Exact ROC AUC (Mann-Whitney U, ties count 1/2) with optional per-sample weights.

    A weight ``w`` counts a sample ``w`` times, so a bootstrap resample is a weight vector.
    NaN when a class has no weight.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    weights = np.ones_like(scores) if weights is None else np.asarray(weights, np.float64)
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order], weights[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group
    pos = np.add.reduceat(w * (y == 1), starts)  # (G,) fake weight per distinct score
    neg = np.add.reduceat(w * (y == 0), starts)  # (G,) real weight per distinct score
    total = pos.sum() * neg.sum()
    if total == 0:
        return math.nan
    below = np.cumsum(neg) - neg  # real weight strictly below each group
    return float((pos * (below + 0.5 * neg)).sum() / total)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"87.5 [71.2, 97.0]"`` (values × ``scale``)."""
        if math.isnan(self.value):
            return "—"
        v, lo, hi = (f"{scale * x:.{digits}f}" for x in (self.value, self.low, self.high))
        return f"{v} [{lo}, {hi}]"


def bootstrap_auc(scores: Any, labels: Any, video_keys: Sequence[str], level: str = "video",
                  n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """AUC with a percentile bootstrap interval that resamples whole videos.

    ``scores``/``labels``/``video_keys`` are per frame. Each resample draws, with replacement and
    separately per class (so both classes are always present), as many real and fake videos as
    there are; ``level="video"`` scores a video by the mean of its frames, ``"frame"`` keeps every
    frame of each drawn video (a cluster bootstrap: frames of one video are not independent).
    """
    if level not in ("video", "frame"):
        raise ValueError(f"level must be 'video' or 'frame', got {level!r}")
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels, np.int64).reshape(-1)
    if not np.isfinite(s).all():  # a diverged model: no interval to give
        return Interval(math.nan, math.nan, math.nan)
    index: dict[str, int] = {}
    owner = np.array([index.setdefault(k, len(index)) for k in video_keys], np.int64)  # (N,)
    n_videos = len(index)
    counts = np.bincount(owner, minlength=n_videos).astype(np.float64)
    v_scores = np.bincount(owner, weights=s, minlength=n_videos) / counts  # (V,)
    v_labels = np.zeros(n_videos, np.int64)
    v_labels[owner] = y
    if level == "video":
        point = weighted_auc(v_scores, v_labels)
    else:
        point = weighted_auc(s, y)
    by_class = [np.flatnonzero(v_labels == c) for c in (0, 1)]
    if any(len(v) == 0 for v in by_class):
        return Interval(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        drawn = np.zeros(n_videos)
        for videos in by_class:
            np.add.at(drawn, videos[rng.integers(0, len(videos), len(videos))], 1.0)
        if level == "video":
            stats[b] = weighted_auc(v_scores, v_labels, drawn)
        else:
            stats[b] = weighted_auc(s, y, drawn[owner])
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(point, float(low), float(high))


# --------------------------------------------------------------------------------------------- evaluation
@dataclass
class ScoredSet:
    """De-duplicated scores of one test set: frame rows and per-branch fake probabilities."""

    keys: list[str]
    frames: np.ndarray  # (N,) frame indices
    labels: np.ndarray  # (N,) 0 real / 1 fake
    scores: dict[str, np.ndarray]  # branch -> (N,) fake probability


class ScoreBook:
    """Accumulates fake probabilities of evaluation frames for several named test sets.

    A score is recorded under ``(video key, window start, frame index)`` (a clip's frames carry
    its first frame index as window start), so DDP padding repeats collapse exactly; :meth:`gather`
    then gives one row per ``(video key, frame index)``: a frame scored in several overlapping
    windows gets the mean of their scores.
    """

    def __init__(self) -> None:
        self._rows: dict[str, dict[tuple[str, int, int], tuple[int, dict[str, float]]]] = \
            defaultdict(dict)

    def reset(self) -> None:
        """Forget every row (at the start and end of an evaluation epoch)."""
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
        """All ranks' rows per test set: one row per (video key, frame index), sorted."""
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
            frames: dict[tuple[str, int], list] = defaultdict(list)  # (key, frame) -> windows
            for (key, _, frame), row in sorted(merged[name].items()):
                frames[(key, frame)].append(row)
            items = sorted(frames.items())
            branches = sorted(items[0][1][0][1]) if items else []
            out[name] = ScoredSet(
                keys=[k for (k, _), _ in items],
                frames=np.array([f for (_, f), _ in items], dtype=np.int64),
                labels=np.array([rows[0][0] for _, rows in items], dtype=np.int64),
                scores={b: np.array([np.mean([s[b] for _, s in rows]) for _, rows in items],
                                    dtype=np.float64) for b in branches},
            )
        return out


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
