"""Stage 1: facial-part masked autoencoder pretraining on real faces (paper §3.1, Algorithm 1)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule

from deepfakemae.masking import FacialPartMasker, MaskStrategy, PartVariant
from deepfakemae.models.mae import create_mae
from deepfakemae.models.pretrained import load_mae_init
from deepfakemae.modules.checkpoints import tag_checkpoint
from deepfakemae.modules.optim import decay_param_groups, scheduled
from deepfakemae.visualize import PictureQueue, reconstruction_grid


class MAEPretrainModule(PictureQueue, LightningModule):
    """Trains :class:`~deepfakemae.models.mae.MaskedAutoencoderViT` with facial-part masking.

    Batches follow the batch contract (``image`` (B,3,H,W), ``landmarks`` (B,68,2)); the
    datamodule runs in real-only frame mode. From the paper (§4.1): patch 16 at 224, mask ratio
    0.5 of the selected part, AdamW lr 1.5e-4 with β1 = 0.9 ("momentum"), weight decay 0.05.
    Ours, where the paper is silent (docs/DESIGN.md): the ViT-B size, β2 = 0.95 and no decay on
    norms, biases and tokens (MAE's recipe), linear warmup then cosine decay per step.
    ``init_weights``: start from public MAE weights (:func:`~deepfakemae.models.pretrained.load_mae_init`;
    the paper config) instead of a random init. Checkpoints resumed by Lightning overwrite it.
    """

    def __init__(self, preset: str = "mae_vit_base_patch16",
                 mask_strategy: MaskStrategy = "facial_part", mask_ratio: float = 0.5,
                 part_variant: PartVariant = "algorithm1",
                 norm_pix_loss: bool = False, lr: float = 1.5e-4,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05,
                 warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0,
                 image_log_every_n_steps: int = 200, init_weights: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_mae(preset, norm_pix_loss=norm_pix_loss)
        if init_weights:  # public MAE weights (encoder + decoder where the file has it)
            load_mae_init(self.model, init_weights)
        self.masker = FacialPartMasker.on_grid_of(self.model, mask_strategy, mask_ratio,
                                                  part_variant)

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        return self.model(images, mask)

    def _masked_step(self, batch: dict, generator: torch.Generator | None = None):
        mask = self.masker(batch["landmarks"], generator=generator).mask
        loss, pred, mask = self.model(batch["image"], mask)
        return loss, pred, mask

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, pred, mask = self._masked_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        self.log("train/masked_fraction", mask.float().mean(), batch_size=batch["image"].shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        every = self.hparams.image_log_every_n_steps
        if every and self.global_step % every == 0:
            self._log_grid("train/reconstruction", batch["image"], mask)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # same masks every validation; the generator lives where the landmarks are (CPU or GPU)
        generator = torch.Generator(device=batch["landmarks"].device).manual_seed(batch_idx)
        loss, _, mask = self._masked_step(batch, generator)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        if batch_idx == 0:
            self._log_grid("val/reconstruction", batch["image"], mask)

    @torch.no_grad()
    def _log_grid(self, key: str, images: torch.Tensor, mask: torch.Tensor) -> None:
        if self.trainer is None or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        recon = self.model.reconstruct(images[:8], mask[:8])
        grid = reconstruction_grid(images[:8], mask[:8], recon, self.model.patch_size)
        self.queue_picture(key, grid, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        tag_checkpoint(checkpoint, self)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(decay_param_groups(self.model, hp.weight_decay), lr=hp.lr,
                                      betas=tuple(hp.betas))
        return scheduled(self, optimizer, hp.warmup_fraction, hp.min_lr_ratio)
