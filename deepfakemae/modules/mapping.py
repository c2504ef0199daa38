"""Stage 2, branch (b): the meta-learned Mapping Network (paper §3.2.2, eq. 1)."""

from __future__ import annotations

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
    meta_step,
    select_batch,
    split_domains,
    split_indices,
)
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.models.mapping_network import ClassifierInput, MappingNetwork
from deepfakemae.modules.checkpoints import load_stage1
from deepfakemae.modules.evaluation import BranchEvaluation
from deepfakemae.modules.optim import warmup_cosine
from deepfakemae.visualize import PictureQueue, to_uint8

#: what the Mapping Network learns to reproduce: the MAE's reconstruction of the whole face
#: (paper §4.1) or of a part-masked face (Table 6 ablation)
MappingTarget = Literal["unmasked", "masked"]


class MetaSplit(NamedTuple):
    """The four parts of one meta-learning batch (paper §3.2.2); sample-disjoint when the batch
    allows (see :func:`meta_split`)."""

    train: dict  # inner-loop meta-train samples (meta-train domains)
    ref: dict  # T_ref: scores each inner step (meta-train domains)
    mix: dict  # "another batch in the Meta-train domain", mixed into the meta-test term
    test: dict  # meta-test samples (the held-out fake domain, and reals)


def _video_groups(indices: np.ndarray, keys: list[str], rng: np.random.Generator
                  ) -> list[np.ndarray]:
    """``indices`` grouped by video key (a video's frames stay together), groups in random order."""
    groups: dict[str, list[int]] = {}
    for i in indices.tolist():
        groups.setdefault(keys[i], []).append(i)
    ordered = list(groups.values())
    return [np.asarray(ordered[j], dtype=np.int64) for j in rng.permutation(len(ordered))]


def _take(groups: list[np.ndarray], n: int, keep: int) -> np.ndarray:
    """Pop whole groups off ``groups`` until ``n`` samples are taken or ``keep`` groups remain."""
    taken: list[np.ndarray] = []
    while sum(map(len, taken)) < n and len(groups) > keep:
        taken.append(groups.pop(0))
    return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


def _split_groups(groups: list[np.ndarray], rng: np.random.Generator, ratio: float
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Video groups split at random ``ratio`` : ``1 - ratio`` (both sides non-empty)."""
    first, second = split_indices(len(groups), rng, ratio=ratio)
    return [groups[i] for i in first], [groups[i] for i in second]


def meta_split(batch: dict, rng: np.random.Generator, ref_fraction: float = 0.5
               ) -> MetaSplit | None:
    """Split a balanced batch into inner meta-train, T_ref, mix and meta-test parts, or None.

    Meta-test: with two or more fake domains in the batch, one at random (the cross-dataset
    protocol: different manipulations in meta-train and meta-test); with a single fake domain
    (cross-manipulation protocol) 20 % of the fake videos. Reals are split in the same proportion.
    The meta-train side is then cut, per class, into the mix batch (as many samples as that class
    has in meta-test: the paper's "another batch in the Meta-train domain"), T_ref
    (``ref_fraction`` of the rest) and the inner-loop batch (the remainder). Samples of one video
    stay in one part, so all four parts are disjoint in samples and in videos.

    Tiny batches: every part keeps both classes; a class without a sample to spare for T_ref or
    the mix batch gives that part up, and it falls back to the inner-loop batch (T_ref first
    gets its own samples, then the mix batch). Returns None (a plain step) when a class has
    fewer than two videos.
    """
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
    share = sum(map(len, fake_train)) / sum(map(len, fakes))
    real_train, real_test = _split_groups(reals, rng, min(max(share, 0.1), 0.9))
    idx: dict[str, list[np.ndarray] | None] = {"train": [], "ref": [], "mix": []}  # per class
    for train_side, test_side in ((fake_train, fake_test), (real_train, real_test)):
        side = list(train_side)
        idx["mix"].append(_take(side, sum(map(len, test_side)), keep=2))
        idx["ref"].append(_take(side, round(ref_fraction * sum(map(len, side))), keep=1))
        idx["train"].append(np.concatenate(side))
    for name in ("ref", "mix"):  # a class with nothing to spare: the part joins the inner batch
        if any(len(p) == 0 for p in idx[name]):
            idx["train"] = [np.concatenate(pair) for pair in zip(idx["train"], idx[name],
                                                                 strict=True)]
            idx[name] = None

    def rows(groups: list[np.ndarray]) -> dict:
        return select_batch(batch, np.concatenate(groups).tolist())

    train = rows(idx["train"])
    return MetaSplit(train=train, ref=train if idx["ref"] is None else rows(idx["ref"]),
                     mix=train if idx["mix"] is None else rows(idx["mix"]),
                     test=rows(fake_test + real_test))


class MappingModule(BranchEvaluation, PictureQueue, LightningModule):
    """ResNet-18 mapper trained to map faces onto the frozen stage-1 MAE's reconstruction.

    Loss (paper eq. 1): ``λcls·BCE + λmse·MSE`` on meta-train plus the same on meta-test, with
    the meta step of :func:`deepfakemae.metalearning.meta_step` (K inner SGD steps on
    functional copies, the step with the best T_ref accuracy kept, second order by default). Each batch is cut by
    :func:`meta_split` into inner meta-train, T_ref, a meta-train-domain mix batch and meta-test.
    ``meta_learning=False`` trains on plain batches (Table 6 "w/o meta"). Outer optimiser SGD
    lr 0.1, momentum 0.9, weight decay 5e-4 (paper §4.1); cosine schedule per step (ours).

    Target: the MAE reconstruction of the input face resized to 56×56. ``target="unmasked"``
    (default; §4.1: second-stage faces "are fed into the model without mask patches") decodes
    every patch from the full face. ``"masked"`` (an ablation) masks facial parts and pastes the
    reconstruction of the masked patches over the visible ones; its ``mask_strategy``,
    ``mask_ratio`` and ``part_variant`` default to ``None`` = the stage-1 checkpoint's own, so
    the Table 4 / 5 variants change both stages; given values override. The effective values
    are written back to ``hparams`` (and so into this module's checkpoints). Target masks are
    drawn fresh per step; the MAE stays frozen in eval mode and is not saved in this module's
    checkpoints (it is only needed for training).

    ``pretrained_backbone``: ResNet-18 from timm's ImageNet weights (paper config) or random.

    BatchNorm: see :func:`deepfakemae.metalearning.meta_step` — batch statistics in every
    forward, running statistics updated once per outer step (by the meta-test forward).
    """

    primary_branch = BRANCHES["mapping"].label
    MASKING_HPARAMS = ("mask_strategy", "mask_ratio", "part_variant")

    def __init__(self, mae_checkpoint: str | None = None,
                 target: MappingTarget = "unmasked",
                 mask_strategy: MaskStrategy | None = None, mask_ratio: float | None = None,
                 part_variant: PartVariant | None = None, pretrained_backbone: bool = False,
                 classifier_input: ClassifierInput = "features", map_size: int = 56,
                 lambda_cls: float = 1.0, lambda_mse: float = 1.0, meta_learning: bool = True,
                 inner_steps: int = 3, inner_lr: float = 0.01, first_order: bool = False,
                 ref_fraction: float = 0.5, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, image_log_every_n_steps: int = 200,
                 seed: int = 0) -> None:
        super().__init__()
        if target not in get_args(MappingTarget):
            raise ValueError(f"target must be one of {get_args(MappingTarget)}, got {target!r}")
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
        if self.hparams.target == "masked":
            self._resolve_masking(stage1_hparams or {})
            hp = self.hparams
            self._masker = FacialPartMasker(hp.mask_strategy, hp.mask_ratio, hp.part_variant,
                                            mae.img_size, mae.patch_size)

    def _resolve_masking(self, stage1_hparams: dict) -> None:
        """Fill masking hparams left at None from stage 1; error if stage 1 does not say."""
        for name in self.MASKING_HPARAMS:
            if self.hparams[name] is None:
                if stage1_hparams.get(name) is None:
                    raise ValueError(f"MappingModule: target='masked' needs {name}; the stage-1 "
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
        """(B,3,H,W) faces + (B,68,2) landmarks → MAE reconstruction (B,3,56,56)."""
        mae = self._mae.to(images.device)
        size = mae.img_size
        if images.shape[-1] != size:
            landmarks = rescale_landmarks(landmarks, size / images.shape[-1])
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True)
        if self.hparams.target == "masked":
            recon = mae.reconstruct(images, self._masker(landmarks).mask)
        else:
            latent, layout = mae.forward_encoder(images, None)
            pred = mae.forward_decoder(latent, layout).float()  # (B, L, P) every patch
            if mae.norm_pix_loss:
                _, mean, std = mae._target(images.float())
                pred = pred * std + mean
            recon = mae.unpatchify(pred).to(images.dtype)
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
            split = meta_split(batch, rng, self.hparams.ref_fraction)
        if split is None:  # plain step (w/o meta, or a batch too small to split)
            loss, parts = self.loss_fn(self.net(batch["image"]), batch)
            return loss, {"train/loss": loss, "train/cls": parts["cls"], "train/mse": parts["mse"]}
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        result = meta_step(self.net, dict(self.net.named_parameters()),
                           dict(self.net.named_buffers()), split.train, split.test, split.ref,
                           self.loss_fn, inner_steps=self.hparams.inner_steps,
                           inner_lr=self.hparams.inner_lr, first_order=self.hparams.first_order,
                           mix_batch=split.mix, generator=generator)
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
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, 0, total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
