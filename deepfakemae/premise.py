"""The paper's premise as a measurement: does a stage-1 MAE reconstruct a masked facial part of a
real face better than the same part of a fake? (protocol and reasoning: docs/DESIGN.md, "The
premise, measured").

For every video, every facial part (``eyes``, ``cheek_nose``, ``lips``) and every measured frame:
mask ``ratio`` of that part's patches with the stage-1 masking (`FacialPartMasker`, one part),
reconstruct (`MaskedAutoencoderViT.reconstruct`, ImageNet-normalised space) and take the mean
squared error over the masked patches only. The patch choice is fixed per frame: drawn from the
landmarks of the *real target* at that frame, seeded by ``(real target key, frame index, part)``
(`frame_seed`), so a fake and the real it was made on get the same mask at the same frame. A video's
error is the mean over its measured frames.

`summarise` turns the per-video errors into one `PremiseRow` per split × method × part: the
video-level AUC of the error (fake vs real, `metrics.bootstrap_auc`), and over (fake, real target)
pairs the share whose fake error exceeds its real's (ties do not count as exceeding) and the mean
difference fake − real, at video level and (share only) at frame level, each with a percentile
bootstrap interval over pairs (frame level: whole video pairs are resampled).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_modules.datasets import VideoItem
from data_modules.indexes.ffpp import target_real_key
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.tensors import resize_faces, to_tensor
from deepfakemae.masking import PART_NAMES, FacialPartMasker
from deepfakemae.metrics import Interval, bootstrap_auc
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.records import FAKE, REAL

NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def frame_seed(key: str, frame_index: int, part: str) -> int:
    """The seed of one frame's patch choice: a stable 63-bit hash of ``key|frame|part``."""
    digest = hashlib.blake2b(f"{key}|{int(frame_index)}|{part}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def fixed_part_masks(masker: FacialPartMasker, landmarks: torch.Tensor, seed_keys: Sequence[str],
                     frame_indices: Sequence[int]) -> torch.Tensor:
    """One mask per frame, each drawn by ``masker`` (a single-part strategy) from its own
    generator seeded by ``frame_seed(seed_keys[t], frame_indices[t], masker.strategy)``.

    landmarks (T, 68, 2) crop px at the masker's ``img_size``. Returns (T, L) bool, True = masked.
    The same landmarks, key and frame always give the same mask, whatever else is in the batch.
    """
    if masker.strategy not in PART_NAMES:
        raise ValueError(f"deepfakemae/premise.py: fixed part masks need a part strategy "
                         f"{PART_NAMES}, got {masker.strategy!r}")
    masks = []
    for t in range(landmarks.shape[0]):
        gen = torch.Generator().manual_seed(frame_seed(seed_keys[t], frame_indices[t],
                                                       masker.strategy))
        masks.append(masker(landmarks[t:t + 1].cpu(), generator=gen).mask[0])
    return torch.stack(masks) if masks else torch.zeros(0, masker.num_patches, dtype=torch.bool)


@torch.no_grad()
def masked_errors(mae: MaskedAutoencoderViT, images: torch.Tensor, masks: torch.Tensor,
                  batch_size: int = 64) -> np.ndarray:
    """Per-image MSE between input and reconstruction over the masked patches only.

    images (T, 3, H, W) ImageNet-normalised, on the MAE's device; masks (T, L) bool. The MSE is
    per patch (mean over its pixels and channels) averaged over masked patches, in the input's
    normalised space (MAE's stage-1 loss, per image). Returns (T,) float64.
    """
    mae.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size]
        m = masks[start:start + batch_size].to(x.device)
        recon = mae.reconstruct(x, m)
        per_patch = (mae.patchify(recon.float()) - mae.patchify(x.float())).pow(2).mean(-1)
        out.append(((per_patch * m).sum(1) / m.sum(1)).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


@dataclass
class VideoError:
    """One video's masked-reconstruction errors for one part.

    ``mask_key``: whose landmarks and key drew the masks (the real target for a paired fake, the
    video itself otherwise); ``target``: the real target's key when it was measured too (a pair).
    """

    split: str
    method: str
    key: str
    label: int
    part: str
    frame_indices: np.ndarray  # (T,) int64 source frame numbers
    errors: np.ndarray  # (T,) float64 per-frame masked MSE
    mask_key: str
    target: str | None = None

    @property
    def error(self) -> float:
        """The video's error: the mean over its measured frames."""
        return float(np.mean(self.errors))


def frame_positions(num_frames: int, frames: int | None) -> np.ndarray:
    """Cached-frame positions to measure: all, or ``frames`` evenly spaced (first and last kept)."""
    if frames is None or frames >= num_frames:
        return np.arange(num_frames)
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    return np.unique(np.linspace(0, num_frames - 1, frames).round().astype(np.int64))


def load_faces(item: VideoItem, img_size: int, frames: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A video's measured frames from its cache: images (T, 3, S, S) ImageNet-normalised at
    ``img_size``, landmarks (T, 68, 2) at that size, and the source frame indices (T,)."""
    entry = FaceCache(item.cache_root).read(item.key, frame_positions(item.num_frames, frames))
    crops, landmarks = resize_faces(entry.crops, entry.landmarks, img_size)
    return to_tensor(crops), torch.from_numpy(np.asarray(landmarks, np.float32)), \
        np.asarray(entry.frame_indices, np.int64)


def measure(mae: MaskedAutoencoderViT, videos: Sequence[VideoItem], mask_ratio: float,
            part_variant: str, frames: int | None = None, parts: Sequence[str] = PART_NAMES,
            device: str | torch.device = "cpu", batch_size: int = 64,
            progress: Callable[[Iterable], Iterable] | None = None) -> list[VideoError]:
    """Masked-reconstruction errors of ``videos`` (reals and fakes of one or more splits).

    A fake whose real target (FF++ ``<Method>/T_S`` → ``real/T``, `target_real_key`) is among
    ``videos`` in the same split is masked, at every frame the target was measured at, with the
    target's landmarks and key — the very mask the target gets; its other frames (and fakes
    without a target) use their own. Returns one `VideoError` per video and part.
    """
    mae = mae.to(device).eval()
    maskers = {p: FacialPartMasker.on_grid_of(mae, p, mask_ratio, part_variant) for p in parts}
    reals = {(v.split, v.key) for v in videos if v.label == REAL}
    ordered = sorted(videos, key=lambda v: (v.label != REAL, v.split, v.key))  # reals first
    target_marks: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    results: list[VideoError] = []
    for item in (progress or iter)(ordered):
        images, landmarks, fidx = load_faces(item, mae.img_size, frames)
        target = target_real_key(item.key) if item.label == FAKE else None
        if target is not None and (item.split, target) not in reals:
            target = None
        if item.label == REAL:
            target_marks[(item.split, item.key)] = dict(zip(fidx.tolist(), landmarks, strict=True))
        by_frame = target_marks.get((item.split, target), {}) if target else {}
        mask_lm = torch.stack([by_frame.get(f, own) for f, own in zip(fidx.tolist(), landmarks,
                                                                       strict=True)])
        seed_keys = [target if f in by_frame else item.key for f in fidx.tolist()]
        images = images.to(device)
        for part in parts:
            masks = fixed_part_masks(maskers[part], mask_lm, seed_keys, fidx.tolist())
            errors = masked_errors(mae, images, masks.to(device), batch_size)
            results.append(VideoError(item.split, item.method, item.key, item.label, part, fidx,
                                      errors, target or item.key, target))
    return results


# ----------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class PremiseRow:
    """The figures of one split × manipulation method × part (intervals are 95 % bootstrap)."""

    split: str
    method: str
    part: str
    num_real: int
    num_fake: int
    auc: Interval  # video-level AUC of the error, fake vs real
    num_pairs: int  # (fake, real target) video pairs
    share: Interval  # share of video pairs with fake error > real error
    mean_diff: Interval  # mean over video pairs of fake − real error
    num_frame_pairs: int
    frame_share: Interval  # share of frame pairs with fake error > real error


def _percentile(stats: np.ndarray, value: float, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(float(value), float(low), float(high))


def pair_intervals(diffs: np.ndarray, n_boot: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[Interval, Interval]:
    """(share of ``diffs > 0``, mean of ``diffs``) with percentile bootstrap intervals that
    resample the pairs with replacement. diffs (P,) fake − real; NaN intervals when P = 0."""
    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        return NAN_INTERVAL, NAN_INTERVAL
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    return (_percentile((d[idx] > 0).mean(1), float((d > 0).mean()), confidence),
            _percentile(d[idx].mean(1), float(d.mean()), confidence))


def cluster_share(diffs: Sequence[np.ndarray], n_boot: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Share of frame pairs with ``diff > 0`` pooled over video pairs, with a bootstrap interval
    that resamples whole video pairs (frames of one video are not independent)."""
    counts = np.array([len(d) for d in diffs], np.float64)
    if counts.sum() == 0:
        return NAN_INTERVAL
    above = np.array([(np.asarray(d) > 0).sum() for d in diffs], np.float64)
    idx = np.random.default_rng(seed).integers(0, len(diffs), (n_boot, len(diffs)))
    return _percentile(above[idx].sum(1) / np.maximum(counts[idx].sum(1), 1),
                       float(above.sum() / counts.sum()), confidence)


def frame_differences(fake: VideoError, real: VideoError) -> np.ndarray:
    """fake − real error at every frame index both measured (the frame pairs of one video pair)."""
    real_at = dict(zip(real.frame_indices.tolist(), real.errors.tolist(), strict=True))
    return np.array([e - real_at[f] for f, e in zip(fake.frame_indices.tolist(),
                                                    fake.errors.tolist(), strict=True)
                     if f in real_at], np.float64)


def summarise(videos: Sequence[VideoError], n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> list[PremiseRow]:
    """One `PremiseRow` per split × fake method × part of ``videos`` (every real video of a split
    is the negative class of each of its methods), sorted by split, method, part order."""
    by = {(v.split, v.key, v.part): v for v in videos}
    if len(by) != len(videos):
        raise ValueError("deepfakemae/premise.py: a video is measured twice for one split and "
                         "part (pooled folds that test a video twice?)")
    rows = []
    part_order = {p: i for i, p in enumerate(PART_NAMES)}
    groups = sorted({(v.split, v.method, v.part) for v in videos if v.label == FAKE},
                    key=lambda g: (g[0], g[1], part_order.get(g[2], 99), g[2]))
    for split, method, part in groups:
        reals = [v for v in videos if v.split == split and v.part == part and v.label == REAL]
        fakes = [v for v in videos if v.split == split and v.part == part and v.method == method
                 and v.label == FAKE]
        both = reals + fakes
        auc = bootstrap_auc([v.error for v in both], [v.label for v in both],
                            [v.key for v in both], level="video", n_boot=n_boot,
                            confidence=confidence, seed=seed)
        pairs = [(f, by[(split, f.target, part)]) for f in fakes
                 if f.target is not None and (split, f.target, part) in by]
        share, mean_diff = pair_intervals(np.array([f.error - r.error for f, r in pairs]),
                                          n_boot, confidence, seed)
        frame_diffs = [frame_differences(f, r) for f, r in pairs]
        rows.append(PremiseRow(split, method, part, len(reals), len(fakes), auc, len(pairs),
                               share, mean_diff, int(sum(len(d) for d in frame_diffs)),
                               cluster_share(frame_diffs, n_boot, confidence, seed)))
    return rows


def unpaired_fakes(videos: Sequence[VideoError]) -> list[tuple[str, str]]:
    """(fake key, the real key it was made on) of FF++-layout fakes whose real was not measured."""
    out = []
    for v in videos:
        want = target_real_key(v.key) if v.label == FAKE else None
        if want is not None and v.target is None and v.part == PART_NAMES[0]:
            out.append((v.key, want))
    return out


def read_errors_csv_rows(rows: Iterable[dict], source: str | Path) -> list[VideoError]:
    """`VideoError` s from the rows of a ``premise_videos.csv`` (``csv.DictReader``), so that the
    per-video results of several runs (cross-validation folds) can be pooled exactly."""
    out = []
    for n, row in enumerate(rows, 2):
        try:
            fidx = np.array([int(x) for x in row["frame_indices"].split()], np.int64)
            errors = np.array([float(x) for x in row["frame_errors"].split()], np.float64)
            if fidx.shape != errors.shape or not fidx.size:
                raise ValueError("frame_indices and frame_errors differ in length or are empty")
            out.append(VideoError(row["split"], row["method"], row["video_key"],
                                  int(row["label"]), row["part"], fidx, errors, row["mask_key"],
                                  row["target"] or None))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}:{n}: not a premise_videos.csv row ({exc}); rerun "
                             "`deepfakemae premise` to rewrite it") from exc
    return out
