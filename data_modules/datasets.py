"""Datasets over face caches: video selection by manifest fields, frame and clip samples.

A *source* (``SourceSpec``) names one face cache root and the videos it contributes (dataset,
split, methods). ``select_videos`` reads the cache manifest and returns the ``ok`` videos that
match, or raises a ``DatasetError`` that names the cache and what to run or change.

``FaceClipDataset`` indexes *windows* of ``clip_len`` consecutive cached frames
(``clip_len=1``: single frames). Two layouts:

- ``windows="all"``: every start 0..n-T of every video; training samplers pick one window per
  video per epoch from this pool (see ``samplers.py``), so the dataset itself holds no epoch state.
- ``windows="tile"``: windows at 0, T, 2T, ... plus, when T does not divide n, one last window
  ending at the last frame, so that every cached frame is covered (evaluation).

A video with fewer than T cached frames yields one window, padded by repeating its last frame
(positions ``0,1,..,n-1,n-1,..``), deterministically.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.augment import FaceAugment
from data_modules.indexes.common import DatasetError
from data_modules.indexes.ffpp import DATASET as FFPP
from data_modules.indexes.ffpp import key_split, load_splits, split_owner
from data_modules.pseudo import DONOR_METHODS, make_blend_swap, make_pseudo_fake
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.tensors import resize_faces, to_tensor, window_positions
from deepfakemae.records import FAKE, REAL, REAL_METHOD
from deepfakemae.synth.methods import base_method

SPLITS = ("train", "val", "test", "all")
UNKNOWN_DOMAIN = -1


#: the old name of :class:`~data_modules.indexes.common.DatasetError` (one class: a dataset
#: index, a face cache or a data configuration that cannot be used)
DataError = DatasetError


@dataclass
class SourceSpec:
    """One named source of videos: a face cache and the manifest fields that select from it.

    ``name`` names the set in logs (``test/<name>/auc``); ``dataset`` filters the manifest's
    ``dataset`` field (None: any); ``split`` is train/val/test or ``all``; ``methods`` lists the
    method names to keep, ``"real"`` included (None: all methods).
    """

    name: str
    cache: str
    dataset: str | None = None
    split: str = "all"
    methods: list[str] | None = None


@dataclass(frozen=True)
class VideoItem:
    """One selected video of a cache: where it lives and its labels."""

    key: str
    cache_root: str
    num_frames: int
    label: int
    method: str
    dataset: str
    split: str
    source: str  # SourceSpec.name
    pseudo_of: str | None = None  # a pseudo-fake twin: the key of the real video it renders


def _status_counts(records: list[dict]) -> str:
    counts = Counter(r.get("status", "?") for r in records)
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _values(records: list[dict], field: str) -> list[str]:
    return sorted({str(r.get(field)) for r in records})


def _num_frames(cache: FaceCache, record: dict) -> int:
    """Cached frames of an ``ok`` record (``num_faces``; else counted in the entry)."""
    if "num_faces" in record:
        return int(record["num_faces"])
    with np.load(cache.entry_path(record["key"]), allow_pickle=False) as npz:
        return len(npz["frame_indices"])


def reassign_splits(records: list[dict], splits_dir: str | Path) -> list[dict]:
    """Manifest records with the split of every FF++-layout video re-derived from the FF++-format
    split files in ``splits_dir`` (``train.json`` / ``val.json`` / ``test.json``): k-fold
    cross-validation and custom protocols over one face cache. Other datasets keep theirs."""
    try:
        owner = split_owner(load_splits(splits_dir))
    except DatasetError as err:
        raise DatasetError(f"splits_dir {splits_dir}: {err}") from err
    out = []
    for record in records:
        split = key_split(record["key"], owner) if record.get("dataset") == FFPP else None
        out.append(record if split is None else {**record, "split": split})
    return out


def select_videos(spec: SourceSpec, splits_dir: str | Path | None = None) -> list[VideoItem]:
    """The ``ok`` videos of ``spec.cache`` matching its dataset / split / methods, sorted by key.

    ``splits_dir``: FF++-format split files that replace the splits recorded in the cache (see
    :func:`reassign_splits`).
    """
    if spec.split not in SPLITS:
        raise DatasetError(f"source {spec.name!r}: split must be one of {SPLITS}, got {spec.split!r}")
    root = Path(spec.cache)
    dataset = spec.dataset or "<dataset>"
    run = (f"run `deepfakemae preprocess --dataset {dataset} --root <{dataset} download folder> "
           f"--output {root}`")
    if not root.is_dir():
        raise DatasetError(f"source {spec.name!r}: no face cache at {root}: {run}")
    cache = FaceCache(root)
    records = cache.manifest()
    if records and splits_dir is not None:
        records = reassign_splits(records, splits_dir)
    if not records:
        raise DatasetError(f"source {spec.name!r}: face cache {root} is empty "
                        f"({cache.manifest_path} lists no videos): {run}")
    ok = [r for r in records if r.get("status") == "ok"]
    ok_frames = [(r, _num_frames(cache, r)) for r in ok]
    ok_frames = [(r, n) for r, n in ok_frames if n > 0]
    if not ok_frames:
        raise DatasetError(f"source {spec.name!r}: face cache {root} has no usable video "
                        f"(statuses: {_status_counts(records)}; ok entries with zero faces: "
                        f"{len(ok)}); check the inputs and {run}")
    chosen = ok_frames
    for field, wanted in (("dataset", spec.dataset),
                          ("split", None if spec.split == "all" else spec.split)):
        if wanted is None:
            continue
        kept = [(r, n) for r, n in chosen if r.get(field) == wanted]
        if not kept:
            raise DatasetError(f"source {spec.name!r}: no ok video in {root} has {field}={wanted!r}; "
                            f"available: {_values([r for r, _ in chosen], field)}")
        chosen = kept
    if spec.methods is not None:
        wanted_m = set(spec.methods)
        available = _values([r for r, _ in chosen], "method")
        missing = sorted(wanted_m - set(available))
        if missing:
            raise DatasetError(f"source {spec.name!r}: methods {missing} not found in {root} "
                            f"(dataset={spec.dataset!r}, split={spec.split!r}); available: {available}")
        chosen = [(r, n) for r, n in chosen if r.get("method") in wanted_m]
    items = []
    for r, n in sorted(chosen, key=lambda rn: rn[0]["key"]):
        method = str(r.get("method", REAL_METHOD))
        label = int(r.get("label", REAL if method == REAL_METHOD else FAKE))
        items.append(VideoItem(key=r["key"], cache_root=str(root), num_frames=n, label=label,
                               method=method, dataset=str(r.get("dataset")),
                               split=str(r.get("split")), source=spec.name))
    return items


def build_domain_map(train_methods: list[str], domains: list[str] | None = None) -> dict[str, int]:
    """Method -> domain id: real = 0, fake methods 1..n (``domains`` order, else sorted).

    A demo method at an artifact strength (``FaceSwapWarp@s3``) shares its base method's domain
    unless ``domains`` lists the strength name itself: strengths of one manipulation are not
    different manipulations to the meta-learner.
    """
    def domain(method: str) -> str:
        return method if domains is not None and method in domains else base_method(method)

    fakes = [m for m in (domains if domains is not None
                         else sorted({domain(m) for m in train_methods})) if m != REAL_METHOD]
    if len(set(fakes)) != len(fakes):
        raise DatasetError(f"domains lists a method twice: {fakes}")
    unknown = sorted({domain(m) for m in train_methods} - set(fakes) - {REAL_METHOD})
    if unknown:
        raise DatasetError(f"training methods {unknown} are missing from `domains` {fakes}; "
                        "add them or leave `domains` unset")
    ids = {REAL_METHOD: 0, **{m: i + 1 for i, m in enumerate(fakes)}}
    return {**ids, **{m: ids[domain(m)] for m in train_methods}}


def _sample_seeds(index: int) -> tuple[int, int]:
    """Two seeds (pseudo-fake, augmentation) of one sample: from the seed a training sampler
    gave its index (``data_modules.samplers.SampleIndex``), else from the torch RNG (per loader
    worker)."""
    seed = getattr(index, "seed", None)
    if seed is None:
        return (int(torch.randint(0, 2**31 - 1, ()).item()),
                int(torch.randint(0, 2**31 - 1, ()).item()))
    a, b = np.random.SeedSequence([seed]).generate_state(2) % (2**31 - 1)
    return int(a), int(b)


class FaceClipDataset(Dataset):
    """Samples of ``clip_len`` consecutive cached frames (``clip_len=1``: frame samples).

    Sample dict: ``image`` (3,H,W) or (T,3,H,W) float32, ``landmarks`` (68,2) or (T,68,2),
    ``label``, ``domain`` (long), ``video_key`` (str), ``frame_index`` () or (T,) long, and
    ``test_set`` (str) when ``test_set_key`` is on (evaluation).
    """

    def __init__(
        self,
        videos: list[VideoItem],
        domain_map: dict[str, int],
        img_size: int,
        clip_len: int = 1,
        windows: str = "tile",
        augment: FaceAugment | None = None,
        test_set_key: bool = False,
    ):
        if not videos:
            raise DatasetError("FaceClipDataset needs at least one video")
        self.videos = videos
        self.domain_map = domain_map
        self.img_size = img_size
        self.clip_len = clip_len
        self.augment = augment
        self.test_set_key = test_set_key
        self._caches: dict[str, FaceCache] = {}
        positions, owners = [], []
        for v_idx, video in enumerate(videos):
            for pos in window_positions(video.num_frames, clip_len, windows):
                positions.append(pos)
                owners.append(v_idx)
        self.positions = np.stack(positions)  # (N, T) cached-frame positions
        self.video_of = np.asarray(owners, np.int64)  # (N,) sample -> video index
        bounds = np.searchsorted(self.video_of, np.arange(len(videos) + 1))
        #: sample indices of each video: ``range(samples_of[v][0], samples_of[v][1])``
        self.sample_ranges = np.stack([bounds[:-1], bounds[1:]], 1)  # (V, 2)
        #: real videos that lend a region to blend-swap pseudo-fakes
        self.donors = [i for i, v in enumerate(videos)
                       if v.label == REAL and v.pseudo_of is None]

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> np.ndarray:
        """(V,) label of each video."""
        return np.asarray([v.label for v in self.videos], np.int64)

    def _cache(self, root: str) -> FaceCache:
        if root not in self._caches:
            self._caches[root] = FaceCache(root)
        return self._caches[root]

    def _donor_clip(self, real_key: str, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``length`` consecutive frames of a real video other than ``real_key``, drawn from
        ``seed``: crops (T,S,S,3) uint8 and landmarks (T,68,2) at ``img_size``."""
        rng = np.random.default_rng(seed + 1)
        donors = [i for i in self.donors if self.videos[i].key != real_key]
        if not donors:
            raise DatasetError(f"no other real video to blend into {real_key!r}")
        donor = self.videos[donors[int(rng.integers(len(donors)))]]
        start = int(rng.integers(max(donor.num_frames - length, 0) + 1))
        pos = np.minimum(np.arange(start, start + length), donor.num_frames - 1)
        uniq, inverse = np.unique(pos, return_inverse=True)
        entry = self._cache(donor.cache_root).read(donor.key, frames=uniq)
        return resize_faces(entry.crops[inverse], entry.landmarks[inverse].astype(np.float32),
                            self.img_size)

    def __getitem__(self, index: int) -> dict:
        video = self.videos[int(self.video_of[index])]
        pos = self.positions[index]  # (T,)
        uniq, inverse = np.unique(pos, return_inverse=True)  # decode padded frames once
        entry = self._cache(video.cache_root).read(video.pseudo_of or video.key, frames=uniq)
        crops = entry.crops[inverse]  # (T, S, S, 3)
        lms = entry.landmarks[inverse].astype(np.float32)  # (T, 68, 2)
        crops, lms = resize_faces(crops, lms, self.img_size)
        seeds = _sample_seeds(index)  # (pseudo-fake, augmentation)
        if video.pseudo_of is not None:  # a real video's pseudo-fake twin: one blend per clip
            seed = seeds[0]
            if video.method in DONOR_METHODS:
                donor_crops, donor_lms = self._donor_clip(video.pseudo_of, len(pos), seed)
                crops = make_blend_swap(crops, lms, donor_crops, donor_lms, seed)
            else:
                crops = make_pseudo_fake(crops, lms, seed)
        if self.augment is not None:
            crops, lms = self.augment(crops, lms, seeds[1])
        image = to_tensor(crops)  # (T, 3, H, W)
        landmarks = torch.from_numpy(np.ascontiguousarray(lms))  # (T, 68, 2)
        frame_index = torch.from_numpy(entry.frame_indices[inverse].astype(np.int64))  # (T,)
        if self.clip_len == 1:
            image, landmarks, frame_index = image[0], landmarks[0], frame_index[0]
        sample = {
            "image": image,
            "landmarks": landmarks,
            "label": torch.tensor(video.label, dtype=torch.long),
            "domain": torch.tensor(self.domain_map.get(video.method, UNKNOWN_DOMAIN),
                                   dtype=torch.long),
            "video_key": video.key,
            "frame_index": frame_index,
        }
        if self.test_set_key:
            sample["test_set"] = video.source
        return sample
