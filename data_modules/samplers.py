"""Training samplers: one random window per chosen video, deterministic from seed + epoch.

Both samplers subclass ``torch.utils.data.DistributedSampler`` so that Lightning leaves them in
place under DDP (it only injects its own sampler when the loader's sampler is *not* a
``DistributedSampler``); no Trainer flag is needed. ``num_replicas`` / ``rank`` default to the
initialised ``torch.distributed`` process group (1 / 0 without one), every rank yields the same
number of indices, and Lightning calls ``set_epoch`` at each epoch start.

Each index is a :class:`SampleIndex`: an ``int`` carrying the sample's own random seed, drawn
from ``(seed, epoch)`` per position of the epoch, which the dataset uses for its augmentation
and pseudo-fake draws (so a sample's pixels do not depend on which loader worker made it).
``resume_at(epoch, n)`` makes the next pass over ``epoch`` start at its ``n``-th index, and
:class:`ResumableLoader` (the training loader) saves its position in Lightning's checkpoints:
a fit resumed in mid-epoch continues exactly where the interrupted one stopped
(``deepfakemae.callbacks.ExactResume`` keeps the position up to date).

Indices refer to ``FaceClipDataset`` samples built with ``windows="all"``: the sampler first
picks videos, then one window (a frame, or a T-frame clip) of each picked video.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from data_modules.datasets import DatasetError, FaceClipDataset
from data_modules.indexes.ffpp import target_real_key
from deepfakemae.records import REAL


class SampleIndex(int):
    """A dataset index with the sample's random ``seed`` (``int(seed)`` in ``[0, 2**31)``)."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleIndex:
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        return obj

    def __reduce__(self):  # keep the seed through pickling (loader workers)
        return SampleIndex, (int(self), self.seed)


class ResumableLoader(DataLoader):
    """The training ``DataLoader`` with Lightning's stateful-loader interface: its state (the
    epoch and the batches of it already trained on, ``batches_done``) goes into every fit
    checkpoint, and loading it makes the sampler skip those batches (``resume_at``) before the
    loader is first iterated — which Lightning does before any callback hook of a resumed fit.
    """

    batches_done = 0

    def state_dict(self) -> dict:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)),
                "batches_done": int(self.batches_done)}

    def load_state_dict(self, state: dict) -> None:
        self.batches_done = int(state.get("batches_done", 0))
        if hasattr(self.sampler, "resume_at") and self.batch_size:
            epoch = int(state.get("epoch", 0))
            self.sampler.set_epoch(epoch)  # Lightning sets it only after its first iteration
            self.sampler.resume_at(epoch, self.batches_done * self.batch_size)


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    live = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if live else 1
    if rank is None:
        rank = dist.get_rank() if live else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
    return num_replicas, rank


class _VideoWindowSampler(DistributedSampler):
    """Shared machinery: epoch RNG, video -> random window, rank sharding."""

    def __init__(self, dataset: FaceClipDataset, num_replicas: int | None = None,
                 rank: int | None = None, seed: int = 0):
        num_replicas, rank = _world(num_replicas, rank)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.ranges = dataset.sample_ranges  # (V, 2)
        self._resume: tuple[int, int] | None = None

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def resume_at(self, epoch: int, position: int) -> None:
        """Start the next pass over ``epoch`` at this rank's ``position``-th index (once)."""
        self._resume = (int(epoch), int(position))

    def _position_seeds(self) -> np.ndarray:
        """(total_size,) the seed of every position of this epoch's global order."""
        return np.random.default_rng([self.seed, self.epoch, 1]).integers(
            0, 2**31 - 1, size=self.total_size)

    def _seeded(self, indices: np.ndarray, start: int, stride: int = 1
                ) -> Iterator[SampleIndex]:
        """This rank's ``indices`` (which begin at ``start`` of the epoch's global order) with
        their per-position seeds, from the resume position when one was set for this epoch."""
        seeds = self._position_seeds()
        positions = start + np.arange(len(indices)) * stride
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        return iter([SampleIndex(i, seeds[p]) for i, p in
                     zip(indices.tolist()[skip:], positions.tolist()[skip:], strict=True)])

    def _windows(self, videos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self.ranges[videos, 0], self.ranges[videos, 1]
        return lo + (rng.random(len(videos)) * (hi - lo)).astype(np.int64)  # uniform in [lo, hi)

    def _video_order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        rng = self._rng()
        videos = self._video_order(rng)  # same on every rank
        mine = self._windows(videos, rng)[self.rank::self.num_replicas]
        return self._seeded(mine, self.rank, stride=self.num_replicas)


class VideoEpochSampler(_VideoWindowSampler):
    """Each video ``samples_per_video`` times per epoch in a random order, each time with an
    independent random window.

    Length per rank is ``ceil(k·V / num_replicas)``: the order is padded by repeating its start.
    """

    def __init__(self, dataset: FaceClipDataset, num_replicas: int | None = None,
                 rank: int | None = None, seed: int = 0, samples_per_video: int = 1):
        super().__init__(dataset, num_replicas, rank, seed)
        if samples_per_video < 1:
            raise ValueError(f"samples_per_video must be >= 1, got {samples_per_video}")
        self.samples_per_video = samples_per_video
        self.num_samples = math.ceil(samples_per_video * len(self.ranges) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _video_order(self, rng: np.random.Generator) -> np.ndarray:
        order = np.concatenate([rng.permutation(len(self.ranges))
                                for _ in range(self.samples_per_video)])
        return np.resize(order, self.total_size)  # pad by cycling


class BalancedRealFakeSampler(_VideoWindowSampler):
    """Equal numbers of real and fake videos per epoch and per rank.

    An epoch is ``num_pairs`` (real, fake) pairs, default = the number of real videos: every
    real video appears once; fakes rotate over the manipulation methods (a shuffled method
    order, cycled) and, within a method, over its videos without repetition until exhausted.
    Pairs are shuffled and dealt to ranks whole (padding by cycling), and the two members of a
    pair sit next to each other in random order: each rank yields ``2 * ceil(num_pairs /
    num_replicas)`` indices, exactly half of them real, and every even-sized batch that starts
    at an even offset is exactly balanced.

    ``paired=True``: the real of each pair is the fake's own target video (FF++ layout: the fake
    ``T_S`` was made on the real ``T``) at the same relative position, so a batch holds both
    sides of every manipulation and identity alone cannot separate them. Fakes whose target is
    not among the training videos get a random real, as without pairing. A pseudo-fake twin
    (``data_modules.pseudo``) is paired with the real video it renders, at the same frame.
    ``pair_seeds=True``: both members of a pair carry the same seed, so they get the same
    augmentation (flip, affine, colour, ...) and differ only where the fake was manipulated.
    """

    def __init__(self, dataset: FaceClipDataset, num_replicas: int | None = None,
                 rank: int | None = None, seed: int = 0, num_pairs: int | None = None,
                 paired: bool = False, pair_seeds: bool = False):
        super().__init__(dataset, num_replicas, rank, seed)
        self.paired = paired
        self.pair_seeds = pair_seeds
        labels = dataset.labels
        self.real = np.flatnonzero(labels == REAL)
        fakes = np.flatnonzero(labels != REAL)
        if len(self.real) == 0 or len(fakes) == 0:
            raise DatasetError(f"balanced sampling needs real and fake videos; the training set has "
                            f"{len(self.real)} real and {len(fakes)} fake")
        methods: dict[str, list[int]] = {}
        for v in fakes:
            methods.setdefault(dataset.videos[v].method, []).append(int(v))
        self.fakes_by_method = {m: np.asarray(v) for m, v in sorted(methods.items())}
        index = {video.key: i for i, video in enumerate(dataset.videos)}
        #: (V,) each fake's target real video, -1 where unknown (and for reals)
        self.target = np.array([index.get(v.pseudo_of or target_real_key(v.key) or "", -1)
                                if v.label != REAL else -1 for v in dataset.videos], np.int64)
        self.num_pairs = int(num_pairs) if num_pairs is not None else len(self.real)
        self.pairs_per_rank = math.ceil(self.num_pairs / self.num_replicas)
        self.num_samples = 2 * self.pairs_per_rank
        self.total_size = self.num_samples * self.num_replicas

    def _fake_draws(self, rng: np.random.Generator, count: int) -> np.ndarray:
        names = list(self.fakes_by_method)
        order = [names[i] for i in rng.permutation(len(names))]
        pools = {m: rng.permutation(v) for m, v in self.fakes_by_method.items()}
        cursor = dict.fromkeys(names, 0)
        out = np.empty(count, np.int64)
        for i in range(count):
            m = order[i % len(order)]
            pool = pools[m]
            out[i] = pool[cursor[m] % len(pool)]
            cursor[m] += 1
        return out

    def _video_order(self, rng: np.random.Generator) -> np.ndarray:
        reals = np.resize(rng.permutation(self.real), self.num_pairs)
        fakes = self._fake_draws(rng, self.num_pairs)
        if self.paired:
            targets = self.target[fakes]
            reals = np.where(targets >= 0, targets, reals)
        pairs = np.stack([reals, fakes], 1)  # (P, 2)
        pairs = pairs[rng.permutation(len(pairs))]
        swap = rng.random(len(pairs)) < 0.5
        pairs[swap] = pairs[swap, ::-1]
        pairs = np.resize(pairs, (self.pairs_per_rank * self.num_replicas, 2))  # pad by cycling
        # deal whole pairs: rank r gets pairs r, r+R, ... -> rows (P_r, 2) flattened
        per_rank = pairs.reshape(self.pairs_per_rank, self.num_replicas, 2).transpose(1, 0, 2)
        return per_rank.reshape(-1)  # rank-major: rank r's block is contiguous

    def _position_seeds(self) -> np.ndarray:
        seeds = super()._position_seeds()
        if self.pair_seeds:  # pairs sit at global positions (2j, 2j+1): the second takes the first's
            seeds[1::2] = seeds[0::2]
        return seeds

    def _align_pairs(self, videos: np.ndarray, windows: np.ndarray) -> np.ndarray:
        """Move each paired real's window to its fake's relative position (members of a pair
        sit at positions 2j, 2j+1 of ``videos``)."""
        pairs, wins = videos.reshape(-1, 2), windows.reshape(-1, 2).copy()
        fake_col = (self.target[pairs[:, 1]] >= 0).astype(np.int64)  # column of the fake
        rows = np.arange(len(pairs))
        fake, real = pairs[rows, fake_col], pairs[rows, 1 - fake_col]
        keep = self.target[fake] == real
        lo_f, hi_f = self.ranges[fake, 0], self.ranges[fake, 1]
        lo_r, hi_r = self.ranges[real, 0], self.ranges[real, 1]
        frac = (wins[rows, fake_col] - lo_f) / np.maximum(hi_f - lo_f, 1)
        aligned = lo_r + np.minimum((frac * (hi_r - lo_r)).astype(np.int64), hi_r - lo_r - 1)
        wins[rows[keep], 1 - fake_col[keep]] = aligned[keep]
        return wins.reshape(-1)

    def __iter__(self) -> Iterator[int]:
        rng = self._rng()
        videos = self._video_order(rng)  # (R * num_samples,), rank-major
        windows = self._windows(videos, rng)
        if self.paired:
            windows = self._align_pairs(videos, windows)
        start = self.rank * self.num_samples
        return self._seeded(windows[start:start + self.num_samples], start)
