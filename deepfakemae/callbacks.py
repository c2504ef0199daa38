"""Lightning callbacks of the experiment configs."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


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
