"""Stage 2, branch (b): the meta-learned Mapping Network (paper §3.2.2, eq. 1)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from deepfakemae.masking import FacialPartMasker
from deepfakemae.meta import MappingLoss, meta_step, select_batch, split_domains, split_indices
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.models.mapping import MappingNetwork
from deepfakemae.modules.checkpoints import load_stage1_mae, tag_checkpoint
from deepfakemae.modules.evaluation import VideoEvaluation
from deepfakemae.modules.optim import warmup_cosine
from deepfakemae.visualize import log_image, to_uint8


def meta_split(batch: dict, rng: np.random.Generator, ref_fraction: float = 0.25
               ) -> tuple[dict, dict, dict] | None:
    """Split a balanced batch into (meta-train, meta-test, T_ref) batches, or None if impossible.

    Fake domains present in the batch are split at random, one domain to meta-test (the
    cross-dataset protocol: different manipulations in meta-train and meta-test); with a single
    fake domain (cross-manipulation protocol) the fakes are split 8:2 at random. Real samples
    are split in the same proportion so that every set holds both classes. ``ref_fraction`` of
    the meta-train samples (at least one per class) form the reference set T_ref that scores
    each inner step; with too few samples T_ref is the meta-train batch itself.
    """
    labels = batch["label"].cpu().numpy()
    domains = batch["domain"].cpu().numpy()
    fakes, reals = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(fakes) < 2 or len(reals) < 2:
        return None
    fake_domains = sorted(set(domains[fakes].tolist()))
    if len(fake_domains) >= 2:
        _, test_domains = split_domains(fake_domains, rng, n_test=1)
        is_test = np.isin(domains[fakes], test_domains)
        fake_train, fake_test = fakes[~is_test], fakes[is_test]
    else:
        tr, te = split_indices(len(fakes), rng, ratio=0.8)
        fake_train, fake_test = fakes[tr], fakes[te]
    share = len(fake_train) / len(fakes)
    tr, te = split_indices(len(reals), rng, ratio=min(max(share, 0.1), 0.9))
    real_train, real_test = reals[tr], reals[te]
    train = np.concatenate([fake_train, real_train])
    test = np.concatenate([fake_test, real_test])
    n_ref_f = int(round(ref_fraction * len(fake_train)))
    n_ref_r = int(round(ref_fraction * len(real_train)))
    if min(n_ref_f, n_ref_r) >= 1 and len(fake_train) - n_ref_f >= 1 and len(real_train) - n_ref_r >= 1:
        ref = np.concatenate([fake_train[:n_ref_f], real_train[:n_ref_r]])
        train = np.concatenate([fake_train[n_ref_f:], real_train[n_ref_r:]])
    else:
        ref = train
    return tuple(select_batch(batch, part.tolist()) for part in (train, test, ref))


class MappingModule(VideoEvaluation, LightningModule):
    """ResNet-18 mapper trained to map faces onto the frozen stage-1 MAE's reconstruction.

    Loss (paper eq. 1): ``λcls·BCE + λmse·MSE`` on meta-train plus the same on meta-test, with
    the meta step of :func:`deepfakemae.meta.meta_step` (K inner SGD steps on functional copies,
    the step with the best T_ref accuracy kept, second order by default). ``meta_learning=False``
    trains on plain batches (Table 6 "w/o meta"). Outer optimiser SGD lr 0.1, momentum 0.9,
    weight decay 5e-4 (paper), cosine schedule per step.

    Target: the MAE reconstruction of the input face resized to 56×56. ``target="masked"``
    (default) masks facial parts as in stage 1 and pastes the reconstruction of the masked
    patches over the visible ones — the paper's "reconstructed faces" depend on the masked
    parts, which is where fakes break consistency; ``"unmasked"`` decodes every patch from the
    full face. Target masks are drawn fresh per step; the MAE stays frozen in eval mode and is
    not saved in this module's checkpoints (it is only needed for training).

    BatchNorm: see :func:`deepfakemae.meta.meta_step` — batch statistics in every forward,
    running statistics updated once per outer step (by the meta-test forward).
    """

    primary_branch = "M"

    def __init__(self, mae_checkpoint: str | None = None, target: str = "masked",
                 mask_strategy: str = "facial_part", mask_ratio: float = 0.5,
                 part_variant: str = "algorithm1", pretrained_backbone: bool = False,
                 classifier_input: str = "features", map_size: int = 56,
                 lambda_cls: float = 1.0, lambda_mse: float = 1.0, meta_learning: bool = True,
                 inner_steps: int = 3, inner_lr: float = 0.01, first_order: bool = False,
                 ref_fraction: float = 0.25, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 5e-4, image_log_every_n_steps: int = 200,
                 seed: int = 0) -> None:
        super().__init__()
        if target not in ("masked", "unmasked"):
            raise ValueError(f"target must be 'masked' or 'unmasked', got {target!r}")
        self.save_hyperparameters()
        self.net = MappingNetwork(pretrained=pretrained_backbone, map_size=map_size,
                                  classifier_input=classifier_input)
        self.loss_fn = MappingLoss(lambda_cls, lambda_mse)
        self._mae: MaskedAutoencoderViT | None = None  # not a submodule: frozen, not saved

    # -- the frozen stage-1 MAE --------------------------------------------------------------
    def attach_mae(self, mae: MaskedAutoencoderViT) -> None:
        """Use ``mae`` (frozen) to make training targets."""
        mae.requires_grad_(False).eval()
        self.__dict__["_mae"] = mae
        self._masker = FacialPartMasker(self.hparams.mask_strategy, self.hparams.mask_ratio,
                                        self.hparams.part_variant, mae.img_size, mae.patch_size)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._mae is None:
            if not self.hparams.mae_checkpoint:
                raise ValueError("MappingModule needs mae_checkpoint (a stage-1 checkpoint) to "
                                 "train: its targets are the MAE's reconstructions")
            self.attach_mae(load_stage1_mae(self.hparams.mae_checkpoint))

    @torch.no_grad()
    def map_target(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) faces + (B,68,2) landmarks → MAE reconstruction (B,3,56,56)."""
        mae = self._mae.to(images.device)
        size = mae.img_size
        if images.shape[-1] != size:
            landmarks = landmarks * (size / images.shape[-1])
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
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = dict(batch, map_target=self.map_target(batch["image"], batch["landmarks"]))
        size = batch["label"].shape[0]
        split = None
        if self.hparams.meta_learning:
            rng = np.random.default_rng([self.hparams.seed, self.global_step, self.global_rank])
            split = meta_split(batch, rng, self.hparams.ref_fraction)
        if split is None:  # plain step (w/o meta, or a batch too small to split)
            outputs = self.net(batch["image"])
            loss, parts = self.loss_fn(outputs, batch)
            self.log_dict({"train/loss": loss, "train/cls": parts["cls"], "train/mse": parts["mse"]},
                          prog_bar=True, batch_size=size)
        else:
            meta_train, meta_test, ref = split
            generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
            result = meta_step(self.net, dict(self.net.named_parameters()),
                               dict(self.net.named_buffers()), meta_train, meta_test, ref,
                               self.loss_fn, inner_steps=self.hparams.inner_steps,
                               inner_lr=self.hparams.inner_lr,
                               first_order=self.hparams.first_order, generator=generator)
            loss = result.loss
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            self.log_dict(result.log_dict("train/meta/"), batch_size=size)
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
        log_image(self.trainer, "train/face_target_mapped", np.concatenate(rows, 0),
                  self.global_step)

    # -- evaluation --------------------------------------------------------------------------
    def fake_probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) → (B,) or clips (B,T,3,H,W) → (B,T) fake probabilities."""
        if images.ndim == 5:
            b, t = images.shape[:2]
            return self.fake_probability(images.flatten(0, 1)).view(b, t)
        return self.net(images)[0].float().sigmoid()

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"M": self.fake_probability(batch["image"])}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        tag_checkpoint(checkpoint, self)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.net.parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = warmup_cosine(optimizer, 0, total)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
