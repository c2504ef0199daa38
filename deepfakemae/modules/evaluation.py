"""Frame scores → exact frame- and video-level metrics per named test set, under DDP too.

Every evaluation sample carries its ``video_key`` and ``frame_index``. Scores are kept per
``(test set, video key, frame index)``; at epoch end they are gathered from every rank with
``all_gather_object`` and de-duplicated on that triple, which removes the samples that
``DistributedSampler`` repeats to even out the ranks. Metrics are then exactly those of a
single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepfakemae.metrics import ScoreBook, ScoredSet, set_metrics
from deepfakemae.modules.checkpoints import tag_checkpoint


@dataclass
class Evaluation:
    """What one evaluation epoch found: the de-duplicated scores and, per test set, its
    metrics and video-level ROC curves ``{branch: (fpr, tpr, auc)}``."""

    scored: dict[str, ScoredSet]
    results: dict[str, dict[str, float]]
    curves: dict[str, dict[str, tuple]]


class VideoEvaluation:
    """LightningModule mixin: per-frame fake probabilities → metrics per named test set.

    A module defines ``score_batch(batch) -> {branch: probabilities}`` and ``primary_branch``.
    Logged names: ``<stage>/<set>/auc`` (video level, primary branch), ``<stage>/<set>/frame_auc``
    and ``video_*`` for AUC/AP/EER/ACC, and ``<stage>/<set>/<branch>/...`` for other branches.
    Each epoch's :class:`Evaluation` stays in ``evaluations[stage]``; the files are written by
    :class:`deepfakemae.callbacks.TestResultFiles`.
    """

    primary_branch: str = "score"

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def score_book(self) -> ScoreBook:
        """This epoch's scores (one :class:`ScoreBook` per module)."""
        if not hasattr(self, "_score_book"):
            self._score_book = ScoreBook()
        return self._score_book

    @property
    def evaluations(self) -> dict[str, Evaluation]:
        """The last :class:`Evaluation` of each stage (``val``, ``test``)."""
        if not hasattr(self, "_evaluations"):
            self._evaluations: dict[str, Evaluation] = {}
        return self._evaluations

    def _eval_step(self, batch: dict, stage: str) -> None:
        with torch.no_grad():
            self.score_book.add_batch(batch, self.score_batch(batch), default_set=stage)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self.score_book.reset()

    def on_test_epoch_start(self) -> None:
        self.score_book.reset()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> Evaluation:
        scored = self.score_book.gather()  # every rank gets every row: identical numbers
        evaluation = Evaluation(scored, {}, {})
        for set_name, rows in scored.items():
            metrics, curves = set_metrics(rows)
            evaluation.results[set_name] = metrics
            evaluation.curves[set_name] = curves
            for name, value in metrics.items():
                branch, _, metric = name.rpartition("/")
                shown = metric if branch in ("", self.primary_branch) else name
                if not math.isnan(value):
                    self.log(f"{stage}/{set_name}/{shown}", value, sync_dist=False)
        self.score_book.reset()
        self.evaluations[stage] = evaluation
        return evaluation


class BranchEvaluation(VideoEvaluation):
    """Mixin of a detector branch's LightningModule: scores a batch by its own
    ``fake_probability(images)`` under its label, and tags its checkpoints with its kind."""

    def fake_probability(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return {self.primary_branch: self.fake_probability(batch["image"])}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        tag_checkpoint(checkpoint, self)
