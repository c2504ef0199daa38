"""LightningCLI wiring: omegaconf configs, the resolved config and run info saved with every run."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from deepfakemae.callbacks import default_callbacks
from deepfakemae.models.pretrained import check_mae_init
from deepfakemae.modules.checkpoints import CHECKPOINT_ARGUMENTS, check_checkpoint
from deepfakemae.runinfo import run_info
from deepfakemae.visualize import local_log_dir


class RunDirError(ValueError):
    """A run that would overwrite a finished one (exit code 2; the message names the fix)."""


def record_names(stage) -> tuple[str, str]:
    """``(config, run info)`` file names of a ``stage``: ``config.yaml`` / ``run_info.json`` for
    ``fit``, ``config_<stage>.yaml`` / ``run_info_<stage>.json`` for an evaluation, so that
    testing a training run's checkpoint keeps that run's own records."""
    stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn
    if stage == "fit":
        return "config.yaml", "run_info.json"
    return f"config_{stage}.yaml", f"run_info_{stage}.json"


def effective_config(config: dict, hparams) -> dict:
    """``config`` with the model's ``init_args`` replaced by the values the module actually
    uses (its ``hparams``: e.g. stage 2's ``preset`` read from the stage-1 checkpoint)."""
    init = (config.get("model") or {}).get("init_args")
    if isinstance(init, dict):
        for key in init:
            value = hparams.get(key) if hasattr(hparams, "get") else None
            if isinstance(value, (str, int, float, bool)):
                init[key] = value
    return config


class SaveConfigAndRunInfo(SaveConfigCallback):
    """Saves the config (LightningCLI) plus the run info and sends both to the logger; an
    evaluation's go beside its results under their own names (:func:`record_names`)."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.config_filename = record_names(stage)[0]
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        info = run_info()
        if trainer.is_global_zero:  # only rank 0 gets here: no collectives (trainer.log_dir is one)
            path = local_log_dir(trainer) / record_names(stage)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        for logger in trainer.loggers:
            config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
            logger.log_hyperparams({"config": effective_config(config, pl_module.hparams),
                                    "run_info": info})


#: ``--ckpt_path`` values Lightning resolves itself (when no file of that name exists)
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def _value(namespace, key: str):
    """``namespace[key]`` of a jsonargparse namespace or dict, ``None`` when absent."""
    try:
        return namespace[key]
    except (KeyError, TypeError, AttributeError):
        return None


def check_run_checkpoints(config) -> None:
    """Check every checkpoint a parsed LightningCLI config names, before any model is built:
    ``--ckpt_path`` must be written by the configured model class (with its MAE preset), and
    the model's ``*_checkpoint`` inputs by the stage each one expects; ``init_weights`` files
    must exist. Raises :class:`~deepfakemae.modules.checkpoints.CheckpointError` or
    :class:`~deepfakemae.models.pretrained.PretrainedWeightsError`."""
    command = _value(config, "subcommand")
    run = _value(config, command) if command else None
    model = _value(run, "model") if run is not None else None
    class_path = _value(model, "class_path") if model is not None else None
    if not class_path:
        return
    name = str(class_path).rsplit(".", 1)[-1]
    init = _value(model, "init_args") or {}
    preset = _value(init, "preset")
    inputs = {arg: _value(init, arg) for arg in CHECKPOINT_ARGUMENTS}
    if inputs.get("mae_checkpoint"):  # stage 2 takes its preset from the stage-1 checkpoint
        preset = None
    ckpt_path = _value(run, "ckpt_path")
    if ckpt_path and (Path(ckpt_path).exists() or ckpt_path not in LIGHTNING_CKPT_KEYWORDS):
        check_checkpoint(ckpt_path, name, preset=preset,
                         purpose=f"`{command} --ckpt_path` with model {name}")
    for arg, needs in CHECKPOINT_ARGUMENTS.items():
        if inputs[arg]:
            check_checkpoint(inputs[arg], needs, purpose=f"{name}'s --model.init_args.{arg}")
    if _value(init, "init_weights"):
        check_mae_init(_value(init, "init_weights"))


def place_outputs(run) -> None:
    """Make ``trainer.default_root_dir`` the one run-folder switch: a logger ``save_dir`` or a
    checkpoint ``dirpath`` left unset (null, as the stage configs leave them) becomes ``<root>``
    or ``<root>/checkpoints``; one given explicitly is kept."""
    trainer = _value(run, "trainer")
    root = _value(trainer, "default_root_dir") if trainer is not None else None
    if not root:
        return
    loggers = _value(trainer, "logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init = _value(logger, "init_args")
        if init is not None and "save_dir" in init and init["save_dir"] is None:
            init["save_dir"] = str(root)
    for callback in _value(trainer, "callbacks") or []:
        init = _value(callback, "init_args")
        if init is not None and "dirpath" in init and init["dirpath"] is None:
            init["dirpath"] = str(Path(root) / "checkpoints")


def check_not_finished(run) -> None:
    """Refuse a ``fit`` that would train over a run's ``last.ckpt`` without ``--ckpt_path``
    (resume) or ``--fresh``; raises :class:`RunDirError` naming the file and both switches."""
    if _value(run, "fresh") or _value(run, "ckpt_path"):
        return
    for callback in _value(_value(run, "trainer"), "callbacks") or []:
        dirpath = _value(_value(callback, "init_args"), "dirpath")
        last = Path(dirpath) / "last.ckpt" if dirpath else None
        if last is not None and last.is_file():
            raise RunDirError(
                f"{last} exists: this run folder already holds a trained model; resume it with "
                f"--ckpt_path {last}, train anew over it with --fresh, or write elsewhere with "
                "RUN_DIR=<folder> (or --trainer.default_root_dir <folder>)")


class DeepfakeMAECLI(LightningCLI):
    """LightningCLI with ``parser_mode="omegaconf"`` so configs can use ``${...}`` interpolation,
    and :func:`deepfakemae.callbacks.default_callbacks` (the test's files and figures) added to
    every run after the config's own callbacks."""

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        """``args`` None reads ``sys.argv``; ``run`` False only parses and instantiates."""
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigAndRunInfo,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": default_callbacks()},
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "omegaconf"},
            args=list(args) if args is not None else None,
            run=run,
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse, place the outputs, refuse to train over a finished run, quiet Lightning's
        evaluation tables unless ``--verbose`` is given (a short summary is printed instead),
        then check the checkpoints the config names before anything is loaded or built
        (LightningCLI itself would load ``--ckpt_path`` next and swap the model class)."""
        super().parse_arguments(parser, args)
        command = _value(self.config, "subcommand")
        run = _value(self.config, command) if command else self.config
        place_outputs(run)
        if command == "fit":
            check_not_finished(run)
        given = sys.argv[1:] if args is None else list(args)
        if command in ("validate", "test") and not any(a.startswith("--verbose") for a in given):
            run["verbose"] = False  # our summary instead of Lightning's tables
        check_run_checkpoints(self.config)

    def add_arguments_to_parser(self, parser) -> None:
        """``--fresh``: let ``fit`` train anew over a finished run."""
        parser.add_argument("--fresh", action="store_true",
                            help="fit: train anew although the run folder already holds "
                                 "last.ckpt (refused otherwise)")


def locate_configs(args: Sequence[str]) -> list[str]:
    """``args`` with each ``-c``/``--config`` file under ``experiments/`` that is not found from
    the working directory replaced by the installed copy (a wheel install ships them)."""
    from deepfakemae.plans import locate

    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = str(locate(out[i + 1]))
        elif arg.startswith("--config="):
            out[i] = "--config=" + str(locate(arg.split("=", 1)[1]))
    return out


class _DropTips(logging.Filter):
    """Drops Lightning's advertising tips (litlogger, litmodels) from its console log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def quiet_upstream_noise() -> None:
    """Silence upstream noise printed on every run that says nothing about it: Lightning's
    litlogger/litmodels tips and its own ``LeafSpec`` deprecation warning."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def run_lightning_cli(args: Sequence[str] | None = None) -> DeepfakeMAECLI:
    """Run ``fit``/``validate``/``test``; ``args`` None reads ``sys.argv``.

    Several runs in one process (``make demo``, tests) each get their own W&B run: the one a run
    opened is finished when it returns.
    """
    quiet_upstream_noise()
    saved_argv = sys.argv
    if args is not None:  # let LightningCLI read them as if typed (it warns when given both)
        sys.argv = [saved_argv[0] if saved_argv else "deepfakemae", *args]
    sys.argv = [sys.argv[0], *locate_configs(sys.argv[1:])]
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
