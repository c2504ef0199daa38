"""Detection metrics (AUC, AP, EER, ACC@0.5), video-level aggregation and DDP-exact score collection.

Scores are "probability of fake" in [0, 1] (label 1 = fake). torchmetrics treats float inputs outside
[0, 1] as logits and applies a sigmoid, so raw logits also work (AUC/AP/EER are unchanged by that
monotone map, ACC@0.5 becomes "logit > 0").

DDP: ``DistributedSampler`` pads the last batch by repeating samples, so gathered predictions contain
duplicates. :class:`ScoreCollector` keeps (score, label, video-key id, frame index) as list states;
after torchmetrics' all_gather its :meth:`ScoreCollector.compute` removes duplicate
(key id, frame index) pairs, giving exactly the single-process result. Video keys are strings and
cannot be all_gathered, so they travel as int64 ids (:func:`key_to_id`, a stable BLAKE2b hash).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryROC,
)
from torchmetrics.utilities.data import dim_zero_cat

KeyLike = Sequence[str] | Tensor


# --------------------------------------------------------------------------------------------- keys
def key_to_id(key: str) -> int:
    """Stable signed int64 id of a video key (BLAKE2b, 8 bytes): the same on every rank and run."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def keys_to_ids(keys: Sequence[str]) -> Tensor:
    """Video keys → (N,) int64 tensor of :func:`key_to_id` ids."""
    return torch.tensor([key_to_id(k) for k in keys], dtype=torch.int64)


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


def frame_and_video_metrics(
    scores: Any, labels: Any, video_keys: KeyLike, prefix: str = ""
) -> dict[str, float]:
    """``{prefix}frame/<m>`` and ``{prefix}video/<m>`` for m in auc, ap, eer, acc."""
    out = {f"{prefix}frame/{k}": v for k, v in compute_metrics(scores, labels).items()}
    vs, vl, _ = video_level(scores, labels, video_keys)
    out.update({f"{prefix}video/{k}": v for k, v in compute_metrics(vs, vl).items()})
    return out


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


# --------------------------------------------------------------------------------------------- DDP
def deduplicate(
    scores: Tensor, labels: Tensor, keys: KeyLike, frame_ids: Tensor
) -> tuple[Tensor, Tensor, KeyLike, Tensor]:
    """Drop repeated (key, frame) pairs, keeping the first occurrence (DistributedSampler padding).

    ``keys`` may be a list of strings or an int64 id tensor; the same type comes back.
    """
    key_list = _key_list(keys)
    fids = frame_ids.reshape(-1).tolist()
    if not (len(key_list) == len(fids) == scores.shape[0] == labels.shape[0]):
        raise ValueError(
            f"metrics.py deduplicate: lengths differ (scores {scores.shape[0]}, labels "
            f"{labels.shape[0]}, keys {len(key_list)}, frames {len(fids)})"
        )
    seen: set[tuple[Any, int]] = set()
    keep: list[int] = []
    for i, pair in enumerate(zip(key_list, fids, strict=True)):
        if pair not in seen:
            seen.add(pair)
            keep.append(i)
    idx = torch.tensor(keep, dtype=torch.long)
    out_keys: KeyLike = keys.reshape(-1)[idx.to(keys.device)] if isinstance(keys, Tensor) else [key_list[i] for i in keep]
    return scores[idx.to(scores.device)], labels[idx.to(labels.device)], out_keys, frame_ids.reshape(-1)[idx.to(frame_ids.device)]


class ScoreCollector(Metric):
    """Accumulates (score, label, video-key id, frame index) and gathers them across DDP ranks.

    ``update(scores, labels, video_keys, frame_ids)``: ``video_keys`` is a list of strings (hashed with
    :func:`key_to_id`, names remembered locally) or an int64 id tensor. ``compute()`` returns the
    deduplicated ``{"scores", "labels", "key_ids", "frame_ids"}`` of all ranks; :meth:`metrics`
    turns that into frame- and video-level metrics. Register all dataset keys with
    :meth:`register_keys` to name videos that other ranks saw.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("key_ids", default=[], dist_reduce_fx="cat")
        self.add_state("frame_ids", default=[], dist_reduce_fx="cat")
        self.key_names: dict[int, str] = {}

    def register_keys(self, keys: Sequence[str]) -> None:
        """Remember id → name for these keys (not a synced state)."""
        for k in keys:
            self.key_names[key_to_id(k)] = k

    def update(self, scores: Tensor, labels: Tensor, video_keys: KeyLike, frame_ids: Tensor) -> None:  # type: ignore[override]
        """Add one batch: scores (B,), labels (B,), keys (B,) and frame ids (B,)."""
        if isinstance(video_keys, Tensor):
            ids = video_keys.reshape(-1).to(torch.int64)
        else:
            self.register_keys(video_keys)
            ids = keys_to_ids(video_keys)
        n = scores.reshape(-1).shape[0]
        if not (ids.numel() == labels.numel() == frame_ids.numel() == n):
            raise ValueError(
                f"metrics.py ScoreCollector.update: sizes differ (scores {n}, labels {labels.numel()}, "
                f"keys {ids.numel()}, frame_ids {frame_ids.numel()}); pass one frame id per score"
            )
        self.scores.append(scores.detach().reshape(-1).float())
        self.labels.append(labels.detach().reshape(-1).long())
        self.key_ids.append(ids.to(self.device))
        self.frame_ids.append(frame_ids.detach().reshape(-1).long())

    def compute(self) -> dict[str, Tensor]:
        """Deduplicated, gathered ``{"scores", "labels", "key_ids", "frame_ids"}`` (CPU tensors)."""
        if isinstance(self.scores, list) and not self.scores:
            empty_f, empty_l = torch.zeros(0), torch.zeros(0, dtype=torch.long)
            return {"scores": empty_f, "labels": empty_l, "key_ids": empty_l, "frame_ids": empty_l}
        s, y, k, f = (dim_zero_cat(x).cpu() for x in (self.scores, self.labels, self.key_ids, self.frame_ids))
        s, y, k, f = deduplicate(s, y, k, f)
        return {"scores": s, "labels": y, "key_ids": k, "frame_ids": f}

    def key_name(self, key_id: int) -> str:
        """Name of a key id if known on this rank, else its hex form."""
        return self.key_names.get(int(key_id), f"id:{int(key_id) & (2**64 - 1):016x}")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Frame- and video-level metrics of everything collected (see :func:`frame_and_video_metrics`)."""
        c: Mapping[str, Tensor] = self.compute()
        return frame_and_video_metrics(c["scores"], c["labels"], c["key_ids"], prefix=prefix)
