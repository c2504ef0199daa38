"""LightningCLI wiring: omegaconf configs, the resolved config and run info saved with every run."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from deepfakemae.runinfo import run_info
from deepfakemae.visualize import local_log_dir


class SaveConfigAndRunInfo(SaveConfigCallback):
    """Saves ``config.yaml`` (LightningCLI) plus ``run_info.json`` and sends both to the logger."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        info = run_info()
        if trainer.is_global_zero:  # only rank 0 gets here: no collectives (trainer.log_dir is one)
            path = local_log_dir(trainer) / "run_info.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(info, indent=2, default=str))
        for logger in trainer.loggers:
            config = self.parser.dump(self.config, skip_none=False, format="json")
            logger.log_hyperparams({"config": json.loads(config), "run_info": info})


class DeepfakeMAECLI(LightningCLI):
    """LightningCLI with ``parser_mode="omegaconf"`` so configs can use ``${...}`` interpolation."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        """``args`` None reads ``sys.argv``; ``run`` False only parses and instantiates."""
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigAndRunInfo,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf"},
            args=list(args) if args is not None else None,
            run=run,
        )


def run_lightning_cli(args: Sequence[str] | None = None) -> DeepfakeMAECLI:
    """Run ``fit``/``validate``/``test``/``predict``; ``args`` None reads ``sys.argv``.

    Several runs in one process (``make demo``, tests) each get their own W&B run: the one a run
    opened is finished when it returns.
    """
    saved_argv = sys.argv
    if args is not None:  # let LightningCLI read them as if typed (it warns when given both)
        sys.argv = [saved_argv[0] if saved_argv else "deepfakemae", *args]
    try:
        return DeepfakeMAECLI()
    finally:
        sys.argv = saved_argv
        _finish_wandb()
        _end_process_group()


def _end_process_group() -> None:
    """Close the DDP process group a run opened, so the next run in this process starts anew."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
