"""Lightning callbacks: the configs' checkpointing, a fit's completion record, interruption
and exact resumption, and the files and figures of a test run (modules compute and keep
results; these write them)."""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from deepfakemae.explain import cam_figure
from deepfakemae.loggers import log_wandb_results
from deepfakemae.results import summary_table, write_results, write_scores_csv
from deepfakemae.rundir import LAST_CHECKPOINT, results_file, scores_file
from deepfakemae.runstate import SETTINGS_ENV, clear_done, write_done
from deepfakemae.visualize import log_image, roc_figure, to_uint8

#: exit codes of an interrupted run: 128 + the signal number, as a shell reports it
INTERRUPT_EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}
#: the last interruption of a fit in this process ({signal, step, checkpoint}), read by the CLI
LAST_INTERRUPT: dict = {}


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


def finished_schedule(trainer: Trainer) -> bool:
    """Whether a fit that reached its end ran its whole schedule: not interrupted, and
    ``max_steps`` (when set) or ``max_epochs`` reached, or stopped by an ``EarlyStopping``."""
    if trainer.interrupted or trainer.received_sigterm:
        return False
    if any(isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0 for cb in trainer.callbacks):
        return True
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    if max_steps is not None and max_steps >= 0:
        return trainer.global_step >= max_steps
    return max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs


class CompletionRecord(Callback):
    """``<trainer.default_root_dir>/done.json`` when a fit ran its whole schedule
    (:func:`finished_schedule`): global step, epoch, ``max_steps`` / ``max_epochs`` and the final
    checkpoint (path relative to the stage folder, and its size), and the plan's settings hash
    of the run (``DEEPFAKEMAE_SETTINGS_HASH``; None for a hand-run fit). Written atomically in
    ``on_fit_end``, after every ``on_train_end`` (the final ``last.ckpt`` save); a new fit in
    the folder removes an old record first. :func:`deepfakemae.runstate.stage_state` reads it."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            clear_done(Path(trainer.default_root_dir))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not finished_schedule(trainer):
            return
        stage_dir = Path(trainer.default_root_dir)
        checkpoint = next((Path(cb.last_model_path) for cb in trainer.checkpoint_callbacks
                           if getattr(cb, "last_model_path", "")), None)
        if checkpoint is None or not checkpoint.is_file():
            print(f"note: no last checkpoint was saved, so {stage_dir} gets no completion "
                  "record (give a ModelCheckpoint with save_last: true)", file=sys.stderr)
            return
        try:
            named = checkpoint.resolve().relative_to(stage_dir.resolve())
        except ValueError:
            named = checkpoint.resolve()
        write_done(stage_dir, {"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                               "max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs,
                               "checkpoint": str(named),
                               "checkpoint_bytes": checkpoint.stat().st_size,
                               "settings_hash": os.environ.get(SETTINGS_ENV),
                               "finished": time.time()})


class GracefulInterrupt(Callback):
    """A fit stopped by SIGTERM (a cluster's preemption or time limit) or a first Ctrl-C
    (SIGINT, turned into the same stop) ends its current step and saves a resumable
    ``checkpoints/last.ckpt``; the command then exits 143 (SIGTERM) or 130 (SIGINT), so no
    caller takes it for finished. A second Ctrl-C stops at once (Lightning's own handling).

    Lightning raises ``SIGTERMException`` at the end of a training step once SIGTERM arrived
    (all DDP ranks at the same step); the save happens in ``on_exception``. Under SLURM,
    Lightning's ``SLURMEnvironment(auto_requeue=True)`` (its default when SLURM is detected)
    also saves ``hpc_ckpt_<n>.ckpt`` and requeues the job on ``SIGUSR1``; the requeued job's
    SIGTERM then lands here, and a rerun resumes from the newest of both
    (:func:`deepfakemae.runstate.resume_checkpoint`)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        LAST_INTERRUPT.clear()
        self._saved_handler = None
        self._saved_step: int | None = None
        if str(getattr(stage, "value", stage)) != "fit":
            return
        try:
            self._saved_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            self._saved_handler = None

    def _on_sigint(self, signum, frame) -> None:
        LAST_INTERRUPT["signal"] = "SIGINT"
        print("\ninterrupt: finishing this step and saving a resumable checkpoint (Ctrl-C "
              "again stops at once)", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's SIGTERM path: every rank stops

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if getattr(self, "_saved_handler", None) is not None:
            signal.signal(signal.SIGINT, self._saved_handler)
            self._saved_handler = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # save where Lightning's own step checkpoints are taken (it restores that point
        # exactly, the last batch of an epoch included); it then raises SIGTERMException
        if trainer.received_sigterm and getattr(self, "_saved_step", None) != trainer.global_step:
            self._save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # the caller's Ctrl-C handling is back
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        LAST_INTERRUPT.setdefault("signal", "SIGTERM")
        LAST_INTERRUPT["step"] = trainer.global_step
        if getattr(self, "_saved_step", None) == trainer.global_step:
            return
        if trainer.training and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # after the step's hooks, at the end of an epoch: a state Lightning cannot resume
            # exactly; the previous checkpoint stays the resumable one
            print("note: stopped at the end of an epoch; the rerun resumes from the previous "
                  "checkpoint", file=sys.stderr)
            return
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        LAST_INTERRUPT.setdefault("signal", "SIGTERM")
        LAST_INTERRUPT["step"] = trainer.global_step
        self._saved_step = trainer.global_step
        dirpath = next((cb.dirpath for cb in trainer.checkpoint_callbacks
                        if getattr(cb, "dirpath", None)), None)
        if dirpath is None:
            print("note: no checkpoint folder is configured; the interrupted fit saves no "
                  "resumable checkpoint", file=sys.stderr)
            return
        path = Path(dirpath) / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        LAST_INTERRUPT["checkpoint"] = str(path)
        if trainer.is_global_zero:
            print(f"{LAST_INTERRUPT['signal']}: stopped at step {trainer.global_step} of "
                  f"{trainer.max_steps if trainer.max_steps >= 0 else '(epochs)'}; resumable "
                  f"checkpoint {path} (rerun with --ckpt_path={path})", file=sys.stderr,
                  flush=True)


class ExactResume(Callback):
    """Makes a resumed fit end with the weights of an uninterrupted one (same seed).

    Every training step starts from RNG states drawn from ``(seed, global step)`` (torch, NumPy,
    ``random``): masks and any other in-step draw depend on the step only. The training
    samplers (``data_modules.samplers``) give each sample its own seed from ``(seed, epoch,
    position)`` and order from ``(seed, epoch)``; the training loader
    (``data_modules.samplers.ResumableLoader``) saves how many batches of the epoch were trained
    on (kept here after each step), so a fit resumed in mid-epoch skips exactly those.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        if hasattr(loader, "batches_done"):
            loader.batches_done = 0
            # Lightning's own set_epoch is one ahead after a restart from an epoch-end
            # checkpoint; the data order follows the trainer's epoch
            loader.sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        # runs before the checkpoint callbacks' saves (Lightning puts those last)
        if hasattr(trainer.train_dataloader, "batches_done"):
            trainer.train_dataloader.batches_done = batch_idx + 1

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch,
                             batch_idx: int) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        state = np.random.SeedSequence([seed, trainer.global_step]).generate_state(2)
        torch.manual_seed(int(state[0]))
        np.random.seed(int(state[1]))
        random.seed(int(state[0]))


class TestResultFiles(Callback):
    """Writes what a test found (a module's ``evaluations["test"]``) into the run folder
    ``trainer.default_root_dir`` (``RUN_DIR/<stage>`` in the configs), whatever the logger:
    ``scores_test.csv`` (every frame's scores), then ``results_test.json`` (every metric and the
    run's ``provenance``; written last and atomically, it marks the test done), the ROC figure
    and W&B's results table, and prints a summary.

    ``provenance``: set by the CLI before the test ({plan, variant, config_hash, ...})."""

    def __init__(self) -> None:
        super().__init__()
        self.provenance: dict = {}

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evaluation = getattr(pl_module, "evaluations", {}).get("test")
        if evaluation is None or not evaluation.results or not trainer.is_global_zero:
            return
        out = results_file(trainer.default_root_dir)
        write_scores_csv(evaluation.scored, scores_file(trainer.default_root_dir))
        write_results(evaluation.results, out, self.provenance)
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
    # ExactResume before GracefulInterrupt: the loader position is current when a stop saves
    return [CompletionRecord(), ExactResume(), GracefulInterrupt(), TestResultFiles(),
            ActivationMapFigures(), PictureFiles()]
