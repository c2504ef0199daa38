"""The fused DeepfakeMAE detector: mean of the two stage-2 branches (paper §3.2)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule

from deepfakemae.modules.checkpoints import load_module
from deepfakemae.modules.evaluation import VideoEvaluation
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule


class DualNetworkDetector(VideoEvaluation, LightningModule):
    """Scores clips with both branches; a video's score is the mean of the branches' scores.

    Evaluation batches are clips (datamodule ``eval_mode: clip``, T = 5). Per frame: ``F`` is the
    fake probability of the clip the frame belongs to (the Finetuning Network classifies 5-frame
    clips), ``M`` is the Mapping Network's probability of that frame, ``fused`` = (F + M) / 2.
    A video's score is the mean over its frames, so the fused video score is the mean of the two
    branches' video scores. Logged: ``test/<set>/auc`` (fused, video level) and
    ``test/<set>/F/auc``, ``test/<set>/M/auc`` — Table 6's columns.
    """

    primary_branch = "fused"

    def __init__(self, finetune_checkpoint: str, mapping_checkpoint: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.finetune = load_module(FinetuneModule, finetune_checkpoint, mae_checkpoint=None)
        self.mapping = load_module(MappingModule, mapping_checkpoint, mae_checkpoint=None)

    def branch_scores(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """clips (B,T,3,H,W) → per-frame fake probabilities (B,T) for F, M and fused."""
        if clips.ndim == 4:
            clips = clips.unsqueeze(1)
        t = clips.shape[1]
        f = self.finetune.fake_probability(clips)[:, None].expand(-1, t)  # (B, T)
        m = self.mapping.fake_probability(clips)  # (B, T)
        return {"fused": (f + m) / 2, "F": f, "M": m}

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.branch_scores(batch["image"])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        scores = self.branch_scores(batch["image"])
        return {"video_key": batch["video_key"], "frame_index": batch["frame_index"],
                **{k: v.cpu() for k, v in scores.items()}}
