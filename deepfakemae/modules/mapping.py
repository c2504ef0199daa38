"""Stage 2, branch (b): the meta-learned Mapping Network (paper §3.2.2, eq. 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from deepfakemae.branches import BRANCHES
from deepfakemae.explain import BranchCam, mapping_gradcam
from deepfakemae.faces.ibug68 import rescale_landmarks
from deepfakemae.masking import FacialPartMasker, MaskStrategy, PartVariant
from deepfakemae.metalearning import (
    MappingLoss,
    RunningStats,
    meta_step,
    select_batch,
    split_domains,
    split_indices,
)
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.models.mapping_network import ClassifierInput, MappingNetwork
from deepfakemae.modules.checkpoints import load_stage1
from deepfakemae.modules.evaluation import BranchEvaluation
from deepfakemae.modules.optim import scheduled
from deepfakemae.visualize import PictureQueue, to_uint8

#: what the Mapping Network learns to reproduce (docs/DESIGN.md, "Mapping target"):
#: ``masked``: the MAE's reconstruction of a facial-part-masked face, visible patches from the
#: input (MAE's convention); ``masked_decoder``: the decoder's output at every position for the
#: same masked input; ``unmasked``: the decoder's output for the whole face (an ablation)
MappingTarget = Literal["masked", "masked_decoder", "unmasked"]
#: where T_ref, the reference set that picks the inner step, is drawn from
RefSource = Literal["meta_test", "meta_train"]


class MetaSplit(NamedTuple):
    """The four parts of one meta-learning batch (paper §3.2.2); sample-disjoint when the batch
    allows (see :func:`meta_split`)."""

    train: dict  # inner-loop meta-train samples (meta-train domains)
    ref: dict  # T_ref: scores each inner step (meta-test domain by default)
    mix: dict  # "another batch in the Meta-train domain", mixed into the meta-test term
    test: dict  # meta-test samples (the held-out fake domain, and reals)


@dataclass
class _SplitIndices:
    """Sample indices of the parts of a meta split, one array per class (fake, real); ``ref``
    and ``mix`` are None once given up (a class had nothing to spare for them)."""

    train: list[np.ndarray] = field(default_factory=list)
    ref: list[np.ndarray] | None = field(default_factory=list)
    mix: list[np.ndarray] | None = field(default_factory=list)
    test: list[np.ndarray] = field(default_factory=list)


def _given_back(part: list[np.ndarray], homes: list[list[np.ndarray]]) -> list[np.ndarray] | None:
    """``part`` when every class has samples in it; else None, each class's samples appended to
    ``homes[c][c]`` (the side they came from)."""
    if all(len(p) for p in part):
        return part
    for c, taken in enumerate(part):
        homes[c][c] = np.concatenate([homes[c][c], taken])
    return None


def _video_groups(indices: np.ndarray, keys: list[str], rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """``indices`` grouped by video key (a video's frames stay together), groups in random order."""
    groups: dict[str, list[int]] = {}
    for i in indices.tolist():
        groups.setdefault(keys[i], []).append(i)
    ordered = list(groups.values())
    return [np.asarray(ordered[j], dtype=np.int64) for j in rng.permutation(len(ordered))]


def _count(groups: list[np.ndarray]) -> int:
    return sum(map(len, groups))


def _take(groups: list[np.ndarray], n: int, keep: int) -> np.ndarray:
    """Pop whole groups off ``groups`` until ``n`` samples are taken or ``keep`` groups remain."""
    taken: list[np.ndarray] = []
    while _count(taken) < n and len(groups) > keep:
        taken.append(groups.pop(0))
    return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


def _split_groups(groups: list[np.ndarray], rng: np.random.Generator, ratio: float
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Video groups split at random ``ratio`` : ``1 - ratio`` (both sides non-empty)."""
    first, second = split_indices(len(groups), rng, ratio=ratio)
    return [groups[i] for i in first], [groups[i] for i in second]


def meta_split(batch: dict, rng: np.random.Generator, ref_fraction: float = 0.5,
               ref_source: RefSource = "meta_test") -> MetaSplit | None:
    """Split a balanced batch into inner meta-train, T_ref, mix and meta-test parts, or None.

    Meta-test side: with two or more fake domains in the batch, one at random (the cross-dataset
    protocol: different manipulations in meta-train and meta-test); with a single fake domain
    (cross-manipulation protocol) 20 % of the fake videos. Reals are split in the same proportion.
    Per class, T_ref takes ``ref_fraction`` of the meta-test side (``ref_source="meta_test"``)
    or of the meta-train side left after the mix batch (``"meta_train"``); the meta-test batch
    is the rest of the meta-test side; the mix batch (the paper's "another batch in the
    Meta-train domain") takes as many meta-train-side samples as the meta-test batch has; the
    inner-loop batch is the remaining meta-train side. Samples of one video stay in one part, so
    all four parts are disjoint in samples and in videos.

    Tiny batches: every part keeps both classes. A class whose meta-test side has a single
    video gives T_ref from its meta-train side instead; a class without a sample to spare for
    T_ref or the mix batch gives that part up and it falls back to the inner-loop batch.
    Returns None (a plain step) when a class has fewer than two videos.
    """
    if ref_source not in get_args(RefSource):
        raise ValueError(f"ref_source must be one of {get_args(RefSource)}, got {ref_source!r}")
    labels = batch["label"].cpu().numpy()
    domains = batch["domain"].cpu().numpy()
    keys = [str(k) for k in batch["video_key"]]
    fakes = _video_groups(np.flatnonzero(labels == 1), keys, rng)
    reals = _video_groups(np.flatnonzero(labels == 0), keys, rng)
    if len(fakes) < 2 or len(reals) < 2:
        return None
    fake_domains = sorted({int(domains[g[0]]) for g in fakes})
    if len(fake_domains) >= 2:
        _, test_domains = split_domains(fake_domains, rng, n_test=1)
        fake_test = [g for g in fakes if int(domains[g[0]]) in test_domains]
        fake_train = [g for g in fakes if int(domains[g[0]]) not in test_domains]
    else:
        fake_train, fake_test = _split_groups(fakes, rng, 0.8)
    share = _count(fake_train) / _count(fakes)
    real_train, real_test = _split_groups(reals, rng, min(max(share, 0.1), 0.9))
    parts = _SplitIndices()
    ref_home: list[list[np.ndarray]] = []  # per class, the side T_ref was cut from
    for train_side, test_side in ((fake_train, fake_test), (real_train, real_test)):
        side, tside = list(train_side), list(test_side)
        ref, home = np.zeros(0, dtype=np.int64), parts.train
        if ref_source == "meta_test":
            ref, home = _take(tside, round(ref_fraction * _count(tside)), keep=1), parts.test
        parts.test.append(np.concatenate(tside))
        parts.mix.append(_take(side, _count(tside), keep=2))
        if len(ref) == 0:  # meta_train source, or a meta-test side of one video
            ref, home = _take(side, round(ref_fraction * _count(side)), keep=1), parts.train
        parts.ref.append(ref)
        ref_home.append(home)
        parts.train.append(np.concatenate(side))
    # a class with nothing to spare gives the part up: its samples go back where they came from
    parts.ref = _given_back(parts.ref, ref_home)
    parts.mix = _given_back(parts.mix, [parts.train] * len(parts.mix))

    def rows(groups: list[np.ndarray]) -> dict:
        return select_batch(batch, np.concatenate(groups).tolist())

    train, test = rows(parts.train), rows(parts.test)
    fallback_ref = test if ref_source == "meta_test" else train
    return MetaSplit(train=train, ref=fallback_ref if parts.ref is None else rows(parts.ref),
                     mix=train if parts.mix is None else rows(parts.mix), test=test)


class MappingModule(BranchEvaluation, PictureQueue, LightningModule):
    """ResNet-18 mapper trained to map faces onto the frozen stage-1 MAE's reconstruction.

    Loss (paper eq. 1): ``λcls·BCE + λmse·MSE`` on meta-train plus the same on meta-test, with
    the meta step of :func:`deepfakemae.metalearning.meta_step` (K inner SGD steps on
    functional copies, the step with the best T_ref accuracy kept, second order by default). Each batch is cut by
    :func:`meta_split` into inner meta-train, T_ref, a meta-train-domain mix batch and meta-test.
    ``meta_learning=False`` trains on plain batches (Table 6 "w/o meta"). Outer optimiser SGD
    lr 0.1, momentum 0.9, weight decay 5e-4 (paper §4.1); cosine schedule per step (ours).

    Target (``target``, :data:`MappingTarget`): the frozen MAE's reconstruction of the input
    resized to ``map_size``. ``"masked"`` (default): a facial-part mask drawn fresh per face and
    step, masked patches from the decoder, visible ones from the input; ``"masked_decoder"``:
    the decoder's output at every position for the same masked input; ``"unmasked"``: the
    decoder's output for the whole face (Table 6 ablation). ``mask_strategy``, ``mask_ratio``
    and ``part_variant`` default to ``None`` = the stage-1 checkpoint's own (so Tables 4 / 5
    vary both stages); given values override; the effective values are written back to
    ``hparams``. The MAE stays frozen in eval mode and is not saved in this module's checkpoints.

    T_ref (``ref_source``): from the meta-test side (default) or the meta-train side of each
    batch (:func:`meta_split`). ``bn_stats``: whose BatchNorm running statistics advance, θ's
    (default) or θ_sel's (:func:`deepfakemae.metalearning.meta_step`); T_ref is scored in eval
    mode. Logged per step: ``train/meta/param_distance`` (‖θ_sel − θ‖), ``selected_step``,
    ``ref_acc_step{k}``, ``train_loss`` / ``test_loss``.

    ``pretrained_backbone``: ResNet-18 from timm's ImageNet weights (paper config) or random.
    """

    primary_branch = BRANCHES["mapping"].label
    MASKING_HPARAMS = ("mask_strategy", "mask_ratio", "part_variant")

    def __init__(self, mae_checkpoint: str | None = None,
                 target: MappingTarget = "masked",
                 mask_strategy: MaskStrategy | None = None, mask_ratio: float | None = None,
                 part_variant: PartVariant | None = None, pretrained_backbone: bool = False,
                 classifier_input: ClassifierInput = "features", map_size: int = 56,
                 lambda_cls: float = 1.0, lambda_mse: float = 1.0, meta_learning: bool = True,
                 inner_steps: int = 3, inner_lr: float = 0.01, first_order: bool = False,
                 ref_fraction: float = 0.5, ref_source: RefSource = "meta_test",
                 bn_stats: RunningStats = "theta", lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, image_log_every_n_steps: int = 200,
                 seed: int = 0) -> None:
        super().__init__()
        for name, value, kind in (("target", target, MappingTarget),
                                  ("ref_source", ref_source, RefSource),
                                  ("bn_stats", bn_stats, RunningStats)):
            if value not in get_args(kind):
                raise ValueError(f"{name} must be one of {get_args(kind)}, got {value!r}")
        self.save_hyperparameters()
        self.net = MappingNetwork(pretrained=pretrained_backbone, map_size=map_size,
                                  classifier_input=classifier_input)
        self.loss_fn = MappingLoss(lambda_cls, lambda_mse)
        self._mae: MaskedAutoencoderViT | None = None  # not a submodule: frozen, not saved
        self._masker: FacialPartMasker | None = None

    # -- the frozen stage-1 MAE --------------------------------------------------------------
    def attach_mae(self, mae: MaskedAutoencoderViT, stage1_hparams: dict | None = None) -> None:
        """Use ``mae`` (frozen) to make training targets.

        ``stage1_hparams``: the hyper-parameters of the stage-1 run that trained ``mae``; a
        masked target takes the masking settings left at ``None`` from them.
        """
        mae.requires_grad_(False).eval()
        self.__dict__["_mae"] = mae
        if self.hparams.target != "unmasked":
            self._resolve_masking(stage1_hparams or {})
            hp = self.hparams
            self._masker = FacialPartMasker.on_grid_of(mae, hp.mask_strategy, hp.mask_ratio,
                                                       hp.part_variant)

    def _resolve_masking(self, stage1_hparams: dict) -> None:
        """Fill masking hparams left at None from stage 1; error if stage 1 does not say."""
        for name in self.MASKING_HPARAMS:
            if self.hparams[name] is None:
                if stage1_hparams.get(name) is None:
                    raise ValueError(f"MappingModule: target={self.hparams.target!r} needs {name}; the stage-1 "
                                     f"checkpoint records none, so pass --model.init_args.{name}")
                self.hparams[name] = stage1_hparams[name]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._mae is None:
            if not self.hparams.mae_checkpoint:
                raise ValueError("MappingModule needs mae_checkpoint (a stage-1 checkpoint) to "
                                 "train: its targets are the MAE's reconstructions")
            self.attach_mae(*load_stage1(self.hparams.mae_checkpoint))

    @torch.no_grad()
    def map_target(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) faces + (B,68,2) landmarks → MAE reconstruction (B,3,S,S), S = map_size.

        Masked targets draw a fresh facial-part mask per face and step (the stage-1 masking).
        """
        mae = self._mae.to(images.device)
        size = mae.img_size
        if images.shape[-1] != size:
            landmarks = rescale_landmarks(landmarks, size / images.shape[-1])
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
        target = self.hparams.target
        mask = None if target == "unmasked" else self._masker(landmarks).mask
        recon = mae.reconstruct(images, mask, keep_visible=target == "masked")
        s = self.hparams.map_size
        return F.interpolate(recon, size=(s, s), mode="bilinear", align_corners=False,
                             antialias=True)

    # -- training ----------------------------------------------------------------------------
    def training_loss(self, batch: dict, step: int, rank: int
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The loss of one training batch (with its ``map_target``) and what to log.

        The meta split and shuffle are drawn from ``(seed, step, rank)``: under DDP every rank
        splits its own shard and runs the inner loop on it, and DDP averages the outer
        gradients, so a DDP step equals one process accumulating the ranks' meta-gradients
        (``tests/test_ddp.py``).
        """
        split = None
        if self.hparams.meta_learning:
            rng = np.random.default_rng([self.hparams.seed, step, rank])
            split = meta_split(batch, rng, self.hparams.ref_fraction, self.hparams.ref_source)
        if split is None:  # plain step (w/o meta, or a batch too small to split)
            loss, parts = self.loss_fn(self.net(batch["image"]), batch)
            return loss, {"train/loss": loss, "train/cls": parts["cls"], "train/mse": parts["mse"]}
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        result = meta_step(self.net, dict(self.net.named_parameters()),
                           dict(self.net.named_buffers()), split.train, split.test, split.ref,
                           self.loss_fn, inner_steps=self.hparams.inner_steps,
                           inner_lr=self.hparams.inner_lr, first_order=self.hparams.first_order,
                           mix_batch=split.mix, generator=generator,
                           running_stats=self.hparams.bn_stats, stats_batch=batch)
        return result.loss, {"train/loss": result.loss, **result.log_dict("train/meta/")}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = dict(batch, map_target=self.map_target(batch["image"], batch["landmarks"]))
        loss, logs = self.training_loss(batch, self.global_step, self.global_rank)
        size = batch["label"].shape[0]
        self.log("train/loss", logs.pop("train/loss"), prog_bar=True, batch_size=size)
        self.log_dict(logs, prog_bar="train/cls" in logs, batch_size=size)
        every = self.hparams.image_log_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self._log_mapping(batch)
        return loss

    @torch.no_grad()
    def _log_mapping(self, batch: dict) -> None:
        n = min(6, batch["image"].shape[0])
        s = self.hparams.map_size
        face = F.interpolate(batch["image"][:n], size=(s, s), mode="bilinear", antialias=True)
        self.net.eval()  # no BatchNorm statistics from this side batch
        mapped = self.net(batch["image"][:n])[1]
        self.net.train()
        rows = [np.concatenate(r, axis=1) for r in zip(to_uint8(face), to_uint8(batch["map_target"][:n]),
                                                       to_uint8(mapped), strict=True)]
        self.queue_picture("train/face_target_mapped", np.concatenate(rows, 0), self.global_step)

    # -- evaluation --------------------------------------------------------------------------
    def fake_probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) → (B,) or clips (B,T,3,H,W) → (B,T) fake probabilities."""
        if images.ndim == 5:
            b, t = images.shape[:2]
            return self.fake_probability(images.flatten(0, 1)).view(b, t)
        return self.net(images)[0].float().sigmoid()

    def frame_probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) → (B,T) fake probabilities, one per frame."""
        return self.fake_probability(clips)

    def activation_map(self, face: torch.Tensor) -> BranchCam:
        """Grad-CAM of one face (1,3,H,W) on the fused features, and the mapped face (paper
        Fig. 3)."""
        cam, probability, mapped = mapping_gradcam(self.net, face)
        title = BRANCHES["mapping"].title
        return BranchCam(title, cam, probability,
                         [("mapped face", f"({title} output)", to_uint8(mapped)[0])])

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        return scheduled(self, optimizer)  # no warmup
