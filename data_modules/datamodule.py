"""``DeepfakeDataModule``: face-cache sources -> training, validation and test loaders.

Training (``mode``): ``"frame"`` yields single frames with landmarks (MAE pre-training with
``real_only=True``; Mapping Network with domain labels), ``"clip"`` yields ``clip_len``
consecutive cached frames of a video (Finetuning Network). An epoch visits each training video
once (one random frame / clip each, drawn from ``seed`` and the epoch), or with
``balanced=True`` ``2 x #real videos`` samples, half real, half fake across methods.

Evaluation (``eval_mode``, default ``mode``) is deterministic and covers every cached frame:
``"frame"`` yields each frame; ``"clip"`` yields consecutive T-frame windows tiling the video.
Each named val / test source gets its own loader, in order (``val_set_names``,
``test_set_names``), so modules can log ``test/<name>/auc``. Under DDP Lightning shards these
loaders with a padded ``DistributedSampler``; samples carry ``video_key`` and ``frame_index``
so that the repeated ones can be dropped before computing metrics.
"""

from __future__ import annotations

import signal
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader

from data_modules.augment import AUGMENT_KEYS, FaceAugment, build_train_transform
from data_modules.datasets import (
    DatasetError,
    FaceClipDataset,
    SourceSpec,
    VideoItem,
    build_domain_map,
    select_videos,
)
from data_modules.pseudo import (
    FAKE_SOURCES,
    PSEUDO_METHODS,
    FakeSource,
    PseudoMethod,
    pseudo_fake_videos,
)
from data_modules.samplers import BalancedRealFakeSampler, ResumableLoader, VideoEpochSampler
from deepfakemae.records import REAL, REAL_METHOD


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers ignore SIGTERM and SIGINT: a cluster (or Ctrl-C) signals every process of
    a job, and the training process, not its workers, decides how to stop (it saves a
    checkpoint, then ends them; they also exit when it is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DeepfakeDataModule(L.LightningDataModule):
    """Loaders over face caches built by ``deepfakemae preprocess``.

    Args:
        train / val / test: sources (``SourceSpec``); ``None`` disables that stage.
        mode: training samples, ``"frame"`` or ``"clip"``.
        eval_mode: evaluation samples, ``"frame"`` or ``"clip"`` (default: ``mode``).
        real_only: keep only real training videos (MAE pre-training).
        batch_size / eval_batch_size: loader batch sizes (eval default: ``batch_size``).
        num_workers: DataLoader workers.
        img_size: crops are resized to this size when the cache stores another.
        clip_len: frames per clip (the paper averages 5).
        balanced: balanced real/fake training sampler.
        domains: fake methods in domain-id order (ids 1..n; real = 0); default sorted training
            fake methods. Evaluation methods outside the map get domain -1.
        augment: training augmentation (flip, affine, colour, JPEG, noise, blur): ``True`` for the
            default probabilities, ``False`` for none, or a mapping of
            ``build_train_transform`` arguments (probabilities and ranges:
            ``{flip_p: 0.5, jpeg_p: 0.0, color_range: 0.2, ...}``).
        seed: seed of the training frame / video choice.
        samples_per_video: training draws per video per epoch (each with its own random
            frame or clip); with ``balanced`` the epoch holds this many pairs per real video.
        splits_dir: FF++-format split files (``train/val/test.json``) that override the splits
            recorded in the caches for FF++-layout videos (k-fold cross-validation, custom
            protocols); ``None`` keeps the recorded splits.
        paired: with ``balanced``, draw each fake together with its own target real video at
            the same position (see ``BalancedRealFakeSampler``).
        pair_augment: with ``paired``, ``"own"`` (each sample its own augmentation draw) or
            ``"shared"`` (a fake and its paired real get the same one, so they differ only
            where the fake was manipulated).
        fake_source: training fakes: ``"dataset"`` (the sources' fake videos), ``"pseudo"``
            (only pseudo-fakes made on the fly from the real training videos; the dataset fakes
            are left out) or ``"both"``. Evaluation sets are unchanged.
        pseudo_methods: which pseudo-fakes ``pseudo``/``both`` make, each its own domain (see
            ``data_modules.pseudo``): ``self_blend`` (default, ``SelfBlendPseudo``) and/or
            ``blend_swap`` (``BlendSwapPseudo``: a region of another real training video).
    """

    def __init__(
        self,
        train: list[SourceSpec] | None = None,
        val: list[SourceSpec] | None = None,
        test: list[SourceSpec] | None = None,
        mode: Literal["frame", "clip"] = "frame",
        eval_mode: Literal["frame", "clip"] | None = None,
        real_only: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        img_size: int = 224,
        clip_len: int = 5,
        balanced: bool = False,
        domains: list[str] | None = None,
        augment: bool | dict[str, float] = True,
        seed: int = 0,
        pin_memory: bool = False,
        samples_per_video: int = 1,
        splits_dir: str | None = None,
        paired: bool = False,
        pair_augment: Literal["own", "shared"] = "own",
        fake_source: FakeSource = "dataset",
        pseudo_methods: list[PseudoMethod] | None = None,
    ):
        super().__init__()
        for name, value in (("mode", mode), ("eval_mode", eval_mode or mode)):
            if value not in ("frame", "clip"):
                raise DatasetError(f"{name} must be 'frame' or 'clip', got {value!r}")
        if clip_len < 1:
            raise DatasetError(f"clip_len must be >= 1, got {clip_len}")
        if balanced and real_only:
            raise DatasetError("balanced=True needs fake videos but real_only=True keeps only reals")
        self.train_sources = list(train or [])
        self.val_sources = list(val or [])
        self.test_sources = list(test or [])
        for stage, sources in (("val", self.val_sources), ("test", self.test_sources)):
            names = [s.name for s in sources]
            if len(set(names)) != len(names):
                raise DatasetError(f"{stage} source names must be unique, got {names}")
        self.mode = mode
        self.eval_mode = eval_mode or mode
        self.real_only = real_only
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.img_size = img_size
        self.clip_len = clip_len
        self.balanced = balanced
        self.domains = domains
        if isinstance(augment, dict):
            unknown = sorted(set(augment) - set(AUGMENT_KEYS))
            if unknown:
                raise DatasetError(f"augment: unknown keys {unknown}; use {list(AUGMENT_KEYS)}")
        self.augment = augment
        self.seed = seed
        self.pin_memory = pin_memory
        if samples_per_video < 1:
            raise DatasetError(f"samples_per_video must be >= 1, got {samples_per_video}")
        self.samples_per_video = samples_per_video
        self.splits_dir = splits_dir
        if paired and not balanced:
            raise DatasetError("paired=True pairs fakes with their real targets inside balanced "
                            "batches; set balanced=True too")
        self.paired = paired
        if pair_augment not in ("own", "shared"):
            raise DatasetError(f"pair_augment must be 'own' or 'shared', got {pair_augment!r}")
        if pair_augment == "shared" and not paired:
            raise DatasetError("pair_augment='shared' gives a fake and its paired real the same "
                               "augmentation; set paired=True too")
        self.pair_augment = pair_augment
        if fake_source not in FAKE_SOURCES:
            raise DatasetError(f"fake_source must be one of {list(FAKE_SOURCES)}, got {fake_source!r} "
                            "(--data.init_args.fake_source)")
        if real_only and fake_source != "dataset":
            raise DatasetError(f"fake_source={fake_source!r} makes training fakes but real_only=True "
                            "keeps only reals; use fake_source: dataset for pre-training")
        self.fake_source = fake_source
        self.pseudo_methods = list(pseudo_methods or ["self_blend"])
        unknown = sorted(set(self.pseudo_methods) - set(PSEUDO_METHODS))
        if unknown:
            raise DatasetError(f"pseudo_methods: unknown {unknown}; use {list(PSEUDO_METHODS)} "
                            "(--data.init_args.pseudo_methods)")
        self.domain_map: dict[str, int] | None = None
        self.train_dataset: FaceClipDataset | None = None
        self.val_datasets: list[FaceClipDataset] = []
        self.test_datasets: list[FaceClipDataset] = []

    # -- selection ---------------------------------------------------------------------------
    @property
    def val_set_names(self) -> list[str]:
        return [s.name for s in self.val_sources]

    @property
    def test_set_names(self) -> list[str]:
        return [s.name for s in self.test_sources]

    def _train_videos(self) -> list[VideoItem]:
        videos: list[VideoItem] = []
        for spec in self.train_sources:
            videos += select_videos(spec, self.splits_dir)
        if self.real_only:
            videos = [v for v in videos if v.method == REAL_METHOD]
            if not videos:
                raise DatasetError(f"real_only=True but the training sources "
                                f"{[s.name for s in self.train_sources]} select no real video")
        else:
            try:
                videos = pseudo_fake_videos(videos, self.fake_source, self.pseudo_methods)
            except ValueError as exc:
                raise DatasetError(f"training sources {[s.name for s in self.train_sources]}: "
                                f"{exc}") from exc
            n_real = sum(v.label == REAL for v in videos)
            if n_real == 0 or n_real == len(videos):
                raise DatasetError(
                    f"training needs real and fake videos, but the training sources "
                    f"{[s.name for s in self.train_sources]} select {n_real} real and "
                    f"{len(videos) - n_real} fake (fake_source={self.fake_source!r}); add the "
                    f"missing class (e.g. methods: [real, ...]) or set real_only=True for "
                    f"pre-training")
        return videos

    def _eval_dataset(self, spec: SourceSpec) -> FaceClipDataset:
        assert self.domain_map is not None
        clip_len = self.clip_len if self.eval_mode == "clip" else 1
        return FaceClipDataset(select_videos(spec, self.splits_dir), self.domain_map, self.img_size,
                               clip_len=clip_len, windows="tile", test_set_key=True)

    def setup(self, stage: str | None = None) -> None:
        """Select videos and build datasets for ``stage`` (fit / validate / test / predict).

        The domain map comes from ``domains`` or, when unset, from the training sources, which
        are then read for every stage so that ids agree between training and evaluation.
        """
        fit = stage in (None, "fit")
        need_train = bool(self.train_sources) and (
            (fit and self.train_dataset is None) or (self.domain_map is None and self.domains is None))
        train_videos = self._train_videos() if need_train else []
        if self.domain_map is None:
            self.domain_map = build_domain_map([v.method for v in train_videos], self.domains)
        if fit and train_videos and self.train_dataset is None:
            clip_len = self.clip_len if self.mode == "clip" else 1
            self.train_dataset = FaceClipDataset(
                train_videos, self.domain_map, self.img_size, clip_len=clip_len, windows="all",
                augment=self._augmentation())
        if stage in (None, "fit", "validate") and not self.val_datasets:
            self.val_datasets = [self._eval_dataset(s) for s in self.val_sources]
        if stage in (None, "test", "predict") and not self.test_datasets:
            self.test_datasets = [self._eval_dataset(s) for s in self.test_sources]

    def _augmentation(self) -> FaceAugment | None:
        if isinstance(self.augment, dict):
            return FaceAugment(build_train_transform(**self.augment))
        return FaceAugment() if self.augment else None

    # -- loaders -----------------------------------------------------------------------------
    def train_sampler(self) -> VideoEpochSampler | BalancedRealFakeSampler:
        """The training sampler (DDP-aware; a ``DistributedSampler`` Lightning keeps)."""
        if self.train_dataset is None:
            raise DatasetError("no training data: pass `train` sources and call setup('fit')")
        if self.balanced:
            pairs = self.samples_per_video * int((self.train_dataset.labels == 0).sum())
            return BalancedRealFakeSampler(self.train_dataset, seed=self.seed, num_pairs=pairs,
                                           paired=self.paired,
                                           pair_seeds=self.pair_augment == "shared")
        return VideoEpochSampler(self.train_dataset, seed=self.seed,
                                 samples_per_video=self.samples_per_video)

    def _loader(self, dataset: FaceClipDataset, batch_size: int, loader=DataLoader,
                **kw) -> DataLoader:
        workers = {"worker_init_fn": ignore_stop_signals} if self.num_workers > 0 else {}
        return loader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                      pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                      **workers, **kw)

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        sampler = self.train_sampler()
        # drop a ragged last batch (BatchNorm, balanced pairs) unless it is the only one
        return self._loader(self.train_dataset, self.batch_size, loader=ResumableLoader,
                            sampler=sampler, drop_last=len(sampler) > self.batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        if not self.val_datasets:
            self.setup("validate")
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        if not self.test_datasets:
            self.setup("test")
        return [self._loader(d, self.eval_batch_size, shuffle=False) for d in self.test_datasets]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()
