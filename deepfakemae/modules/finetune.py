"""Stage 2, branch (a): the Finetuning Network (paper §3.2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from deepfakemae.branches import BRANCHES
from deepfakemae.explain import BranchCam, finetune_gradcam
from deepfakemae.models.classifier import FinetuneClassifier, Pooling
from deepfakemae.models.mae import create_mae
from deepfakemae.modules.checkpoints import load_stage1_mae
from deepfakemae.modules.evaluation import BranchEvaluation
from deepfakemae.modules.optim import decay_param_groups, scheduled

DECODER_PARTS = ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "mask_token")


def drop_decoder(mae: torch.nn.Module) -> torch.nn.Module:
    """Remove the MAE decoder in place (the Finetuning Network uses the encoder only)."""
    for name in DECODER_PARTS:
        if hasattr(mae, name):
            delattr(mae, name)
    return mae


class FinetuneModule(BranchEvaluation, LightningModule):
    """The stage-1 encoder on full, unmasked faces; 5-frame clips; cross-entropy.

    Batches are clips (``image`` (B,T,3,H,W)); each frame is encoded, mean-pooled over patch
    tokens (see :class:`~deepfakemae.models.classifier.FinetuneClassifier`), averaged over the T
    frames and classified. AdamW, lr 1e-3 (paper §4.1); weight decay 0.05, warmup + cosine per
    step and mean-token pooling are ours (docs/DESIGN.md). Evaluation scores a clip's fake
    probability and gives it to each of its frames.

    ``mae_checkpoint``: a stage-1 checkpoint (required for real runs; ``None`` starts from a
    randomly initialised ``preset``, for tests and ablations).
    """

    primary_branch = BRANCHES["finetune"].label

    def __init__(self, mae_checkpoint: str | None = None, preset: str = "mae_vit_base_patch16",
                 pooling: Pooling = "mean", lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_fraction: float = 0.05, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        if mae_checkpoint:
            mae = load_stage1_mae(mae_checkpoint)
            self.hparams["preset"] = mae.preset  # so the checkpoint rebuilds without stage 1
        else:
            mae = create_mae(preset)
        self.classifier = FinetuneClassifier(drop_decoder(mae), pooling=pooling)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B,T,3,H,W) → logits (B,2)."""
        return self.classifier(clips)

    def fake_probability(self, clips: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) → (B,) probability of the fake class."""
        return self.classifier(clips).float().softmax(-1)[:, 1]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.classifier(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        size = batch["label"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/acc", acc, batch_size=size)
        return loss

    def frame_probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) → (B,T): each clip's fake probability given to its T frames."""
        return self.fake_probability(clips)[:, None].expand(-1, clips.shape[1])

    def activation_map(self, face: torch.Tensor) -> BranchCam:
        """Grad-CAM of one face (1,3,H,W) over the patch grid (paper Fig. 3)."""
        cam, probability = finetune_gradcam(self.classifier, face)
        return BranchCam(BRANCHES["finetune"].title, cam, probability)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(decay_param_groups(self.classifier, hp.weight_decay),
                                      lr=hp.lr)
        return scheduled(self, optimizer, hp.warmup_fraction)
