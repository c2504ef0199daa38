"""Frame scores → exact frame- and video-level metrics per named test set, under DDP too.

Every evaluation sample carries its ``video_key`` and ``frame_index``. Scores are kept per
``(test set, video key, frame index)``; at epoch end they are gathered from every rank with
``all_gather_object`` and de-duplicated on that triple, which removes the samples that
``DistributedSampler`` repeats to even out the ranks. Metrics are then exactly those of a
single-process run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from deepfakemae.loggers import log_wandb_results
from deepfakemae.metrics import ScoreBook, set_metrics
from deepfakemae.results import summary_table, write_scores_csv
from deepfakemae.visualize import log_image, roc_figure


class VideoEvaluation:
    """LightningModule mixin: per-frame fake probabilities → metrics per named test set.

    A module defines ``score_batch(batch) -> {branch: probabilities}`` and ``primary_branch``.
    Logged names: ``<stage>/<set>/auc`` (video level, primary branch), ``<stage>/<set>/frame_auc``
    and ``video_*`` for AUC/AP/EER/ACC, and ``<stage>/<set>/<branch>/...`` for other branches.
    At test end, ROC curves are logged as a figure and every number lands in
    ``<default_root_dir>/results_test.json`` (read by ``deepfakemae run``/``report``/``demo``).
    """

    primary_branch: str = "score"

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def score_book(self) -> ScoreBook:
        if not hasattr(self, "_score_book"):
            self._score_book = ScoreBook()
        return self._score_book

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

    def _finish_evaluation(self, stage: str) -> dict[str, dict[str, float]]:
        scored = self.score_book.gather()  # every rank gets every row: identical numbers
        results: dict[str, dict[str, float]] = {}
        curves_by_set = {}
        for set_name, rows in scored.items():
            metrics, curves = set_metrics(rows)
            results[set_name] = metrics
            curves_by_set[set_name] = curves
            for name, value in metrics.items():
                branch, _, metric = name.rpartition("/")
                shown = metric if branch in ("", self.primary_branch) else name
                if not math.isnan(value):
                    self.log(f"{stage}/{set_name}/{shown}", value, sync_dist=False)
        self.score_book.reset()
        self.eval_results = getattr(self, "eval_results", {})
        self.eval_results[stage] = results
        trainer = self.trainer
        if stage == "test" and trainer is not None and trainer.is_global_zero and results:
            # the run folder itself (RUN_DIR/<stage> in the configs), whatever the logger
            out = Path(trainer.default_root_dir) / "results_test.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            write_scores_csv(scored, out.with_name("scores_test.csv"))
            out.write_text(json.dumps(results, indent=2, sort_keys=True))  # last: marks done
            plotted = {f"{s}/{b}": c for s, cs in curves_by_set.items() for b, c in cs.items()
                       if not math.isnan(c[2])}
            if plotted:
                log_image(trainer, "test/roc", roc_figure(plotted), trainer.global_step)
            log_wandb_results(trainer, results, curves_by_set)
            print(summary_table(results, out), flush=True)
        return results
