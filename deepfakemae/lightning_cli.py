"""LightningCLI wiring: omegaconf configs, the resolved config and run info saved with every run,
the stage folder's lock and completion rules (:mod:`deepfakemae.runstate`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from deepfakemae.callbacks import TestResultFiles, default_callbacks
from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import atomic_write_text
from deepfakemae.models.pretrained import check_mae_init
from deepfakemae.modules.checkpoints import CHECKPOINT_ARGUMENTS, check_checkpoint
from deepfakemae.rundir import LAST_CHECKPOINT, checkpoints_dir
from deepfakemae.runinfo import run_info
from deepfakemae.runstate import (
    acquire_lock,
    exit_with_parent,
    release_lock,
    resume_checkpoint,
)
from deepfakemae.visualize import local_log_dir


class RunDirError(DeepfakeMAEError, ValueError):
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
            atomic_write_text(path, json.dumps(info, indent=2, default=str))
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
            init["dirpath"] = str(checkpoints_dir(root))


#: environment the plan runner sets for a stage: where its results come from
PROVENANCE_ENV = {"plan": "DEEPFAKEMAE_PLAN", "variant": "DEEPFAKEMAE_VARIANT",
                  "config_hash": "DEEPFAKEMAE_CONFIG_HASH"}


#: stage folders this process locked (released when its LightningCLI run returns)
_HELD_LOCKS: list[Path] = []


def stage_dir(run) -> Path:
    """The stage folder of a parsed run: ``trainer.default_root_dir`` (Lightning's default, the
    working directory, when unset)."""
    root = _value(_value(run, "trainer"), "default_root_dir")
    return Path(root) if root else Path.cwd()


def resolve_resume(run) -> None:
    """``fit --ckpt_path=last``: the stage's newest resumable checkpoint
    (:func:`deepfakemae.runstate.resume_checkpoint`), or none for a first run — so one job line
    starts, and after a preemption resumes, the same stage (a finished stage resumes at its
    last step and ends at once, unless the line raised ``max_steps``)."""
    if _value(run, "ckpt_path") == "last" and not _value(run, "fresh"):
        found = resume_checkpoint(stage_dir(run))
        run["ckpt_path"] = str(found) if found is not None else None


def config_hash(config: dict) -> str:
    """A short SHA-256 of a JSON-able config (sorted keys)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def is_rank_zero_process() -> bool:
    """False in the other ranks a DDP launcher (or SLURM) starts: they neither lock nor watch."""
    return all(os.environ.get(k, "0") in ("", "0")
               for k in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def check_not_finished(run) -> None:
    """Refuse a ``fit`` that would train over a run's ``last.ckpt`` without ``--ckpt_path``
    (resume) or ``--fresh``; raises :class:`RunDirError` naming the file and both switches."""
    if _value(run, "fresh") or _value(run, "ckpt_path"):
        return
    for callback in _value(_value(run, "trainer"), "callbacks") or []:
        dirpath = _value(_value(callback, "init_args"), "dirpath")
        last = Path(dirpath) / LAST_CHECKPOINT if dirpath else None
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
        """Parse, place the outputs, refuse to train over a finished run, load ``--ckpt_path``
        with ``weights_only=True`` unless ``--weights_only=false`` is given, quiet Lightning's
        evaluation tables unless ``--verbose`` is given (a short summary is printed instead),
        then check the checkpoints the config names before anything is loaded or built
        (LightningCLI itself would load ``--ckpt_path`` next and swap the model class)."""
        super().parse_arguments(parser, args)
        command = _value(self.config, "subcommand")
        run = _value(self.config, command) if command else self.config
        place_outputs(run)
        if command == "fit":
            resolve_resume(run)
            check_not_finished(run)
        if command and "weights_only" in run and run["weights_only"] is None:
            run["weights_only"] = True  # --ckpt_path is loaded like every checkpoint here
        given = sys.argv[1:] if args is None else list(args)
        if command in ("validate", "test") and not any(a.startswith("--verbose") for a in given):
            run["verbose"] = False  # our summary instead of Lightning's tables
        check_run_checkpoints(self.config)
        if command in ("fit", "test") and is_rank_zero_process():
            acquire_lock(stage_dir(run), f"deepfakemae {command}")
            _HELD_LOCKS.append(stage_dir(run))

    def before_test(self) -> None:
        """Give the test's results their provenance: the plan, variant and config hash the
        plan runner passes (``DEEPFAKEMAE_PLAN`` / ``_VARIANT`` / ``_CONFIG_HASH``), else the
        hash of this run's own parsed config."""
        run = _value(self.config, "test")
        own = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        provenance = {key: os.environ.get(var) for key, var in PROVENANCE_ENV.items()}
        provenance["config_hash"] = provenance["config_hash"] or config_hash(own)
        init = _value(_value(run, "model"), "init_args") or {}
        provenance["checkpoints"] = {arg: str(init[arg]) for arg in CHECKPOINT_ARGUMENTS
                                     if _value(init, arg)}
        for callback in self.trainer.callbacks:
            if isinstance(callback, TestResultFiles):
                callback.provenance = provenance

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
    exit_with_parent()
    try:
        return DeepfakeMAECLI()
    finally:
        while _HELD_LOCKS:
            release_lock(_HELD_LOCKS.pop())
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
