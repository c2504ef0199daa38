"""Stage 2, branch (a): the Finetuning Network (paper §3.2.1)."""

from __future__ import annotations

import copy

import numpy as np
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

    ``ensemble``: K independent Finetuning Networks (default 1, the paper's one), each its own
    copy of the stage-1 encoder and its own head, trained side by side: a training batch of B
    clips is cut into K consecutive slices of B/K (member k learns from slice k only, so the
    members see different samples and augmentations), and a clip's fake probability is the
    members' mean. No config uses K > 1: measured and not adopted (docs/EVIDENCE.md, "What the
    per-speaker offset is"). ``classifier`` is member 0, ``extra_members`` the rest.
    """

    primary_branch = BRANCHES["finetune"].label

    def __init__(self, mae_checkpoint: str | None = None, preset: str = "mae_vit_base_patch16",
                 pooling: Pooling = "mean", lr: float = 1e-3, weight_decay: float = 0.05,
                 warmup_fraction: float = 0.05, label_smoothing: float = 0.0,
                 ensemble: int = 1) -> None:
        super().__init__()
        if ensemble < 1:
            raise ValueError(f"FinetuneModule: ensemble must be >= 1, got {ensemble}")
        self.save_hyperparameters()
        if mae_checkpoint:
            mae = load_stage1_mae(mae_checkpoint)
            self.hparams["preset"] = mae.preset  # so the checkpoint rebuilds without stage 1
        else:
            mae = create_mae(preset)
        encoder = drop_decoder(mae)
        self.classifier = FinetuneClassifier(copy.deepcopy(encoder) if ensemble > 1 else encoder,
                                             pooling=pooling)
        # each member its own encoder copy and head (the heads' initial draws differ)
        self.extra_members = torch.nn.ModuleList(
            FinetuneClassifier(copy.deepcopy(encoder), pooling=pooling) for _ in range(ensemble - 1))

    @property
    def members(self) -> list[FinetuneClassifier]:
        """The K Finetuning Networks (``classifier`` first)."""
        return [self.classifier, *self.extra_members]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B,T,3,H,W) → logits (B,2) (of member 0; see :meth:`fake_probability`)."""
        return self.classifier(clips)

    def fake_probability(self, clips: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) → (B,) probability of the fake class (the members' mean)."""
        return torch.stack([m(clips).float().softmax(-1)[:, 1] for m in self.members]).mean(0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        members = self.members
        images = batch["image"].tensor_split(len(members))
        labels = batch["label"].tensor_split(len(members))
        losses, correct = [], []
        for member, x, y in zip(members, images, labels, strict=True):
            if len(y) == 0:  # a last batch smaller than K: the later members skip it
                continue
            logits = member(x)
            losses.append(F.cross_entropy(logits, y,
                                          label_smoothing=self.hparams.label_smoothing))
            correct.append(logits.argmax(-1) == y)
        loss = torch.stack(losses).sum()  # members share no parameter: each its own gradient
        size = batch["label"].shape[0]
        self.log("train/loss", loss / len(losses), prog_bar=True, batch_size=size)
        self.log("train/acc", torch.cat(correct).float().mean(), batch_size=size)
        return loss

    def frame_probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(B,T,3,H,W) → (B,T): each clip's fake probability given to its T frames."""
        return self.fake_probability(clips)[:, None].expand(-1, clips.shape[1])

    def activation_map(self, face: torch.Tensor) -> BranchCam:
        """Grad-CAM of one face (1,3,H,W) over the patch grid (paper Fig. 3); of an ensemble,
        the members' mean map and probability."""
        explained = [finetune_gradcam(m, face) for m in self.members]
        return BranchCam(BRANCHES["finetune"].title, np.mean([c for c, _ in explained], axis=0),
                         float(np.mean([p for _, p in explained])))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(decay_param_groups(torch.nn.ModuleList(self.members),
                                                         hp.weight_decay),
                                      lr=hp.lr)
        return scheduled(self, optimizer, hp.warmup_fraction)
