"""Weight import: ImageNet / MAE-pretrained weights from timm, the Hugging Face Hub or files.

The models (:mod:`deepfakemae.models.mae`, :mod:`deepfakemae.models.mapping_network`) are plain
``nn.Module`` s; every download and checkpoint read they need goes through this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.models.mae import MaskedAutoencoderViT

#: the command-line switch that trains from a random init instead of ImageNet weights
RANDOM_INIT_SWITCH = "--model.init_args.pretrained_backbone false"


class PretrainedWeightsError(DeepfakeMAEError, RuntimeError):
    """Public weights (timm's ImageNet ResNet-18, MAE's ViT) could not be obtained or fit."""


def create_resnet18(pretrained: bool) -> nn.Module:
    """timm's ResNet-18, with its ImageNet weights (``pretrained``) or randomly initialised.

    The weights come from the Hugging Face Hub (``timm/resnet18.a1_in1k``) and are cached under
    ``HF_HOME``; once cached they load offline (``HF_HUB_OFFLINE=1``). Without them a
    :class:`PretrainedWeightsError` names the switch to a random init.
    """
    if not pretrained:
        return timm.create_model("resnet18", pretrained=False)
    try:
        return timm.create_model("resnet18", pretrained=True)
    except Exception as exc:  # hub, HTTP and file errors differ by version and platform
        raise PretrainedWeightsError(
            f"models/pretrained.py: cannot load timm's ImageNet weights for ResNet-18 "
            f"({type(exc).__name__}: {exc}). Run once with internet access so that they are "
            f"cached under HF_HOME, or train the Mapping Network from a random init with "
            f"`{RANDOM_INIT_SWITCH}`") from exc


@dataclass
class LoadReport:
    """Outcome of `load_timm_mae_encoder`."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # our encoder keys not in the source
    unexpected: list[str] = field(default_factory=list)  # source keys with no counterpart here
    ignored: list[str] = field(default_factory=list)  # source keys deliberately skipped (pos_embed)
    pos_embed_max_abs_diff: float | None = None  # source pos_embed vs our sin-cos table (patches)


_ENCODER_PREFIXES = ("patch_embed.", "blocks.", "norm.")
_DECODER_PREFIXES = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")


def _source_state_dict(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        sd = source
    elif isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        path = os.fspath(source)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    elif isinstance(source, str):
        try:
            sd = timm.create_model(source, pretrained=True, num_classes=0).state_dict()
        except Exception as e:  # network / hub errors: say what to do instead
            raise RuntimeError(
                f"deepfakemae/models/pretrained.py: could not fetch timm weights {source!r} ({e}). "
                "Download them where there is internet and pass the state dict or a file path."
            ) from e
    else:
        raise TypeError(f"deepfakemae/models/pretrained.py: unsupported weight source {type(source).__name__}")
    for wrapper in ("model", "state_dict"):  # original MAE / Lightning checkpoints
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_timm_mae_encoder(
    model: MaskedAutoencoderViT,
    source: Any = "vit_base_patch16_224.mae",
    include_decoder: bool = False,
) -> LoadReport:
    """Copy MAE-pretrained ViT weights into ``model``'s encoder (and optionally decoder).

    source: a state dict, a checkpoint path (``.pth``/``.ckpt``/``.safetensors``) or a timm
    model name fetched with ``timm.create_model(name, pretrained=True)`` (needs internet).
    timm ViT keys (``cls_token``, ``patch_embed.*``, ``blocks.*``, ``norm.*``) have the same names
    here. ``pos_embed`` is not loaded: ours is the fixed 2-D sin-cos table. timm's
    ``vit_base_patch16_224.mae`` stores MAE's checkpoint value, which MAE never trained (a frozen
    sin-cos table with a zero CLS slot) — so nothing is lost; the report gives the measured
    difference to our table (≈ 0 for those weights; large for a randomly initialised timm model).
    Classifier keys (``head.*``, ``fc_norm.*``) are reported as unexpected. Shape mismatches raise.
    With ``include_decoder`` the MAE decoder keys (full MAE checkpoints) are loaded too.
    """
    sd = _source_state_dict(source)
    own = model.state_dict()
    prefixes = _ENCODER_PREFIXES + (_DECODER_PREFIXES if include_decoder else ())
    wanted = {k for k in own if k == "cls_token" or k.startswith(prefixes)}
    if include_decoder:
        wanted.add("mask_token")
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in ("pos_embed", "decoder_pos_embed"):
            report.ignored.append(key)
            if key == "pos_embed" and tuple(value.shape) == tuple(model.pos_embed.shape):
                diff = value[:, 1:].float().cpu() - model.pos_embed[:, 1:].cpu()
                report.pos_embed_max_abs_diff = float(diff.abs().max())
            continue
        if key not in wanted:
            report.unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"deepfakemae/models/pretrained.py: shape mismatch for {key}: source {tuple(value.shape)} vs "
                f"model {tuple(own[key].shape)}; pick the preset that matches the checkpoint"
            )
        to_load[key] = value
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(wanted - set(to_load))
    return report


#: the MAE authors' ViT-B/16 ImageNet-1k pretraining checkpoint with its decoder (He et al.)
MAE_FULL_CHECKPOINT = "mae_pretrain_vit_base_full.pth"
MAE_FULL_URL = "https://dl.fbaipublicfiles.com/mae/pretrain/" + MAE_FULL_CHECKPOINT
FROM_SCRATCH_SWITCH = "--model.init_args.init_weights null"


def _is_file_source(source: Any) -> bool:
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return isinstance(source, os.PathLike) or os.sep in text or text.endswith(
        (".pth", ".pt", ".ckpt", ".safetensors"))


def check_mae_init(source: Any) -> None:
    """Raise :class:`PretrainedWeightsError` (where to get it, the switch to go without) when
    ``source`` names a weights file that is not there; run before any model is built."""
    if not isinstance(source, dict) and _is_file_source(source) and not os.path.isfile(source):
        raise PretrainedWeightsError(
            f"stage-1 initial weights {os.fspath(source)!r} not found. Download the MAE authors' "
            f"ViT-B/16 checkpoint with its decoder ({MAE_FULL_URL}) to that path (or point "
            f"--model.init_args.init_weights, or the MAE_INIT variable, at your copy), or train "
            f"stage 1 from scratch with `{FROM_SCRATCH_SWITCH}`")


def load_mae_init(model: MaskedAutoencoderViT, source: Any) -> LoadReport:
    """Initialise a stage-1 MAE from public MAE weights: encoder, and decoder where present.

    source: a file (the MAE authors' full pretraining checkpoint, ``MAE_FULL_CHECKPOINT``,
    holds both; a Lightning or safetensors file too), a state dict, or a timm model name
    (``vit_base_patch16_224.mae``: encoder only, fetched online). A file that is not there
    raises :class:`PretrainedWeightsError` naming where to get it and the switch to train from
    scratch; an encoder that does not fill up (another preset) raises too.
    """
    check_mae_init(source)
    sd = _source_state_dict(source)
    has_decoder = any(k.startswith(_DECODER_PREFIXES) for k in sd)
    report = load_timm_mae_encoder(model, sd, include_decoder=has_decoder)
    encoder_missing = [k for k in report.missing if not k.startswith(_DECODER_PREFIXES)
                       and k != "mask_token"]
    if encoder_missing:
        raise PretrainedWeightsError(
            f"stage-1 initial weights {source if isinstance(source, str) else 'given'} lack "
            f"{len(encoder_missing)} encoder tensors of this preset (e.g. {encoder_missing[0]}); "
            "pick the preset the weights were made for (mae_vit_base_patch16 for the MAE "
            f"authors' ViT-B/16), or train from scratch with `{FROM_SCRATCH_SWITCH}`")
    return report
