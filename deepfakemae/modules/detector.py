"""The fused DeepfakeMAE detector: mean of the two stage-2 branches (paper §3.2)."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningModule

from deepfakemae.explain import cam_figure, finetune_gradcam, mapping_gradcam
from deepfakemae.modules.checkpoints import load_module
from deepfakemae.modules.evaluation import VideoEvaluation
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule
from deepfakemae.visualize import log_image, to_uint8


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
        # the checkpoint holds every weight: no stage-1 file, no ImageNet download needed
        self.mapping = load_module(MappingModule, mapping_checkpoint, mae_checkpoint=None,
                                   pretrained_backbone=False)

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

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._cam_rows: dict[str, dict[int, np.ndarray]] = {}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if self.trainer.is_global_zero:
            self._collect_activation_maps(batch)

    def on_test_epoch_end(self) -> None:
        for name, rows in getattr(self, "_cam_rows", {}).items():
            figures = [rows[label] for label in sorted(rows)]
            width = max(f.shape[1] for f in figures)
            figures = [np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))) for f in figures]
            log_image(self.trainer, f"test/{name}/activation_maps", np.concatenate(figures, 0),
                      self.global_step)
        super().on_test_epoch_end()

    def _collect_activation_maps(self, batch: dict) -> None:
        """Grad-CAM of both branches (paper Fig. 3) on the first real and first fake face of
        each test set."""
        name = (batch.get("test_set") or ["test"])[0]
        rows = self._cam_rows.setdefault(name, {})
        clips = batch["image"] if batch["image"].ndim == 5 else batch["image"][:, None]
        for label in (0, 1):
            found = (batch["label"] == label).nonzero()
            if label in rows or len(found) == 0:
                continue
            # evaluation runs in inference mode: step out of it for the gradients
            with torch.inference_mode(False), torch.enable_grad():
                face = clips[int(found[0]), clips.shape[1] // 2][None].clone()
                m_cam, m_prob, mapped = mapping_gradcam(self.mapping.net, face)
                f_cam, f_prob = finetune_gradcam(self.finetune.classifier, face)
            rows[label] = cam_figure(to_uint8(face)[0], m_cam, m_prob, to_uint8(mapped)[0],
                                     f_cam, f_prob)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        scores = self.branch_scores(batch["image"])
        return {"video_key": batch["video_key"], "frame_index": batch["frame_index"],
                **{k: v.cpu() for k, v in scores.items()}}
