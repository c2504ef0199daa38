"""Lightning callbacks: the configs' checkpointing, and the files and figures of a test run
(modules compute and keep results; these write them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from deepfakemae.explain import cam_figure
from deepfakemae.loggers import log_wandb_results
from deepfakemae.results import summary_table, write_scores_csv
from deepfakemae.visualize import log_image, roc_figure, to_uint8


class FinalModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the final weights.

    Lightning skips the end-of-training save of ``last`` when an earlier ``last`` exists, so a
    run stopped by ``max_steps`` between two validations would leave the next stage (and
    ``predict``) an older model. Here ``last`` is rewritten whenever training moved on since it
    was saved.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


class TestResultFiles(Callback):
    """Writes what a test found (a module's ``evaluations["test"]``) into the run folder
    ``trainer.default_root_dir`` (``RUN_DIR/<stage>`` in the configs), whatever the logger:
    ``scores_test.csv`` (every frame's scores), then ``results_test.json`` (every metric; written
    last, it marks the test done), the ROC figure and W&B's results table, and prints a summary."""

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = getattr(pl_module, "evaluations", {}).get("test")
        if evaluation is None or not evaluation.results or not trainer.is_global_zero:
            return
        out = Path(trainer.default_root_dir) / "results_test.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_scores_csv(evaluation.scored, out.with_name("scores_test.csv"))
        out.write_text(json.dumps(evaluation.results, indent=2, sort_keys=True), encoding="utf-8")
        plotted = {f"{s}/{b}": c for s, cs in evaluation.curves.items() for b, c in cs.items()
                   if not math.isnan(c[2])}
        if plotted:
            log_image(trainer, "test/roc", roc_figure(plotted), trainer.global_step)
        log_wandb_results(trainer, evaluation.results, evaluation.curves)
        print(summary_table(evaluation.results, out), flush=True)


class ActivationMapFigures(Callback):
    """Grad-CAM figures of every branch of a detector (paper Fig. 3) on the first real and the
    first fake face of each test set, logged as ``test/<set>/activation_maps`` (and saved as PNG
    under the run's ``figures/``). Modules without ``branch_modules()`` are left alone."""

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows: dict[str, dict[int, np.ndarray]] = {}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object,
                          batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not hasattr(pl_module, "branch_modules") or not trainer.is_global_zero:
            return
        rows = self.rows.setdefault((batch.get("test_set") or ["test"])[0], {})
        clips = batch["image"] if batch["image"].ndim == 5 else batch["image"][:, None]
        for label in (0, 1):
            found = (batch["label"] == label).nonzero()
            if label in rows or len(found) == 0:
                continue
            # evaluation runs in inference mode: step out of it for the gradients
            with torch.inference_mode(False), torch.enable_grad():
                face = clips[int(found[0]), clips.shape[1] // 2][None].clone()
                cams = [branch.activation_map(face) for branch in pl_module.branch_modules()]
            rows[label] = cam_figure(to_uint8(face)[0], cams)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, rows in getattr(self, "rows", {}).items():
            figures = [rows[label] for label in sorted(rows)]
            width = max(f.shape[1] for f in figures)
            figures = [np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))) for f in figures]
            log_image(trainer, f"test/{name}/activation_maps", np.concatenate(figures, 0),
                      pl_module.global_step)
        self.rows = {}


class PictureFiles(Callback):
    """Logs the pictures a module queued during a step (:class:`~deepfakemae.visualize.
    PictureQueue`: MAE reconstructions, mapped faces) to the loggers and as PNG under the run's
    ``figures/``."""

    def _log(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for key, image, step in getattr(pl_module, "take_pictures", list)():
            log_image(trainer, key, image, step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._log(trainer, pl_module)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule,
                                *args) -> None:
        self._log(trainer, pl_module)


def default_callbacks() -> list[Callback]:
    """The callbacks every ``deepfakemae fit/validate/test`` run gets (added by
    :class:`deepfakemae.lightning_cli.DeepfakeMAECLI` after the config's own)."""
    return [TestResultFiles(), ActivationMapFigures(), PictureFiles()]
