"""Loading stage-1 / stage-2 checkpoints safely (``weights_only=True``) with clear errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from deepfakemae.branches import BRANCHES
from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.models.mae import MaskedAutoencoderViT, create_mae


class CheckpointError(DeepfakeMAEError, RuntimeError):
    """A checkpoint that is missing, unreadable, or not the kind the caller needs."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that name the file and the fix.

    ``mmap`` maps the tensors instead of reading them (for checks that need the header only).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; pass the "
                              f".ckpt file inside it (e.g. {path}/checkpoints/last.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train the stage that writes it "
                              "first (see README: make pretrain / make train-stage2)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file (0 bytes; an interrupted "
                              "copy or save?); use another checkpoint or retrain that stage")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # pickle with code, truncated zip, not a torch file at all
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"cannot load {path} as a weights-only checkpoint "
                              f"({type(exc).__name__}: {reason}); it is truncated, corrupt or not "
                              "a checkpoint; only checkpoints written by DeepfakeMAE's Lightning "
                              "runs are accepted") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def sub_state_dict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries of ``state`` under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str,
              allow_missing: tuple[str, ...] = ()) -> None:
    """Strictly load ``state`` into ``module``; name missing/unexpected keys in the error."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allow_missing)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: missing keys {missing[:8]} "
            f"({len(missing)}), unexpected keys {result.unexpected_keys[:8]} "
            f"({len(result.unexpected_keys)}); was it written with another preset?")


def load_stage1(path: str | Path, preset: str | None = None
                ) -> tuple[MaskedAutoencoderViT, dict]:
    """The MAE of a stage-1 (``MAEPretrainModule``) checkpoint and the hyper-parameters it was
    trained with (``preset``, ``mask_strategy``, ``mask_ratio``, ``part_variant``, ...)."""
    ckpt = read_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters", {}))
    preset = preset or hparams.get("preset")
    if preset is None:
        raise CheckpointError(f"{path} records no MAE preset; is it a stage-1 checkpoint? "
                              "(pass the preset explicitly)")
    state = sub_state_dict(ckpt["state_dict"], "model.")
    if not state:
        raise CheckpointError(f"{path} holds no 'model.*' weights: it is not a stage-1 "
                              "MAEPretrainModule checkpoint")
    mae = create_mae(preset, norm_pix_loss=bool(hparams.get("norm_pix_loss", False)))
    load_into(mae, state, str(path))
    return mae, hparams


def load_stage1_mae(path: str | Path, preset: str | None = None) -> MaskedAutoencoderViT:
    """The MAE of a stage-1 (``MAEPretrainModule``) checkpoint, with its own preset by default."""
    return load_stage1(path, preset)[0]


MODULE_TAG = "deepfakemae_module"


def tag_checkpoint(checkpoint: dict, module: nn.Module) -> None:
    """Record which LightningModule wrote ``checkpoint`` (checked by :func:`load_module`)."""
    checkpoint[MODULE_TAG] = type(module).__name__


def load_module(cls, path: str | Path, **overrides):
    """Rebuild a LightningModule of class ``cls`` from its checkpoint (weights only).

    ``overrides`` replace saved hyper-parameters (e.g. ``mae_checkpoint=None`` so that a stage-2
    module does not need the stage-1 file it was trained from).
    """
    ckpt = read_checkpoint(path)
    kind = ckpt.get(MODULE_TAG)
    if kind != cls.__name__:
        raise CheckpointError(f"{path} was written by {kind or 'another program'}, not "
                              f"{cls.__name__}; pass the checkpoint of the right stage")
    accepted = inspect.signature(cls.__init__).parameters
    saved = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k in accepted}
    module = cls(**{**saved, **overrides})  # LightningCLI adds keys such as _class_path
    load_into(module, ckpt["state_dict"], str(path))
    return module


#: module class -> what its checkpoint is, for messages
KINDS = {
    "MAEPretrainModule": "a stage-1 MAE checkpoint (deepfakemae fit -c experiments/pretrain.yaml)",
    **{kind.module_name: f"a stage-2 {kind.title} checkpoint (deepfakemae fit -c "
                         f"experiments/{name}.yaml)" for name, kind in BRANCHES.items()},
    "DualNetworkDetector": "no checkpoint of its own: the fused detector is built from its "
                           "branches' checkpoints ("
                           + ", ".join(f"{name}_checkpoint" for name in BRANCHES)
                           + "), so drop --ckpt_path",
}
#: model init argument -> the module class whose checkpoint it takes
CHECKPOINT_ARGUMENTS = {"mae_checkpoint": "MAEPretrainModule",
                        **{f"{name}_checkpoint": kind.module_name
                           for name, kind in BRANCHES.items()}}


def describe_kind(kind: str | None) -> str:
    """What a checkpoint written by module class ``kind`` is, in words."""
    if kind is None:
        return "not written by a DeepfakeMAE module (no stage tag)"
    what = KINDS.get(kind, f"a {kind} checkpoint")
    return what if kind != "DualNetworkDetector" else "a DualNetworkDetector checkpoint"


def check_checkpoint(path: str | Path, needs: str, preset: str | None = None,
                     purpose: str = "this run") -> dict:
    """Check, before any model is built, that ``path`` is a readable weights-only checkpoint
    written by module class ``needs`` (and, when both are known, with MAE ``preset``).

    Returns the checkpoint's hyper-parameters; raises :class:`CheckpointError` with one message
    naming the file, what it is and what ``purpose`` needs. Tensors are memory-mapped, not read.
    """
    ckpt = read_checkpoint(path, mmap=True)
    kind = ckpt.get(MODULE_TAG)
    if kind != needs:
        raise CheckpointError(f"checkpoint {path} is {describe_kind(kind)}; {purpose} needs "
                              f"{KINDS.get(needs, f'a {needs} checkpoint')}")
    hparams = dict(ckpt.get("hyper_parameters") or {})
    saved = hparams.get("preset")
    if preset is not None and saved is not None and saved != preset:
        raise CheckpointError(f"checkpoint {path} holds a {saved} MAE but {purpose} is "
                              f"configured for {preset}; pass --model.init_args.preset {saved} "
                              "or the checkpoint of a matching run")
    return hparams
