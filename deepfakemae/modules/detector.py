"""The fused DeepfakeMAE detector: the mean of its branches' fake probabilities (paper §3.2)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from lightning.pytorch import LightningModule

from deepfakemae.branches import BRANCHES, FUSED, BranchKind, branch_label, kind_of_module
from deepfakemae.modules.checkpoints import (
    MODULE_TAG,
    CheckpointError,
    load_module,
    read_checkpoint,
)
from deepfakemae.modules.evaluation import VideoEvaluation


def branch_kind(name: str, checkpoint: str) -> BranchKind:
    """The kind of branch ``name``: the one its checkpoint was written by (a registered name
    must be given a checkpoint of its own kind)."""
    tag = read_checkpoint(checkpoint, mmap=True).get(MODULE_TAG)
    kind = kind_of_module(str(tag))
    if kind is None:
        modules = ", ".join(k.module_name for k in BRANCHES.values())
        raise CheckpointError(f"branch {name!r}: {checkpoint} was written by "
                              f"{tag or 'another program'}, not by a branch module ({modules})")
    if name in BRANCHES and BRANCHES[name] != kind:
        raise CheckpointError(f"branch {name!r} needs a {BRANCHES[name].module_name} checkpoint; "
                              f"{checkpoint} was written by {tag}")
    return kind


def fuse(scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The fused score: the mean of the branches' fake probabilities (each of one shape)."""
    return torch.stack(list(scores.values())).mean(0)


class DualNetworkDetector(VideoEvaluation, LightningModule):
    """Scores clips with every branch; the fused score is the mean of the branches' scores.

    Built from a mapping of branch name → stage-2 checkpoint (``branches``); the paper's two,
    ``finetune`` and ``mapping`` (:data:`deepfakemae.branches.BRANCHES`), may also be given as
    ``finetune_checkpoint`` / ``mapping_checkpoint``, the spelling of the stage configs and plans.
    A name outside the registry (``finetune_b``) takes its kind from its checkpoint.

    Evaluation batches are clips (datamodule ``eval_mode: clip``, T = 5). Per frame each branch
    gives a fake probability (the Finetuning Network's clip probability goes to each of the
    clip's frames), ``fused`` is their mean; a video's score is the mean over its frames.
    Logged: ``test/<set>/auc`` (fused, video level) and ``test/<set>/<label>/auc`` per branch
    (``F``, ``M``: Table 6's columns).
    """

    primary_branch = FUSED

    def __init__(self, finetune_checkpoint: str | None = None,
                 mapping_checkpoint: str | None = None,
                 branches: dict[str, str] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        named = {"finetune": finetune_checkpoint, "mapping": mapping_checkpoint}
        checkpoints = {**{n: p for n, p in named.items() if p}, **(branches or {})}
        if not checkpoints:
            raise ValueError("DualNetworkDetector needs at least one branch checkpoint "
                             f"({', '.join(f'{n}_checkpoint' for n in BRANCHES)} or branches)")
        self.labels: dict[str, str] = {}
        for name, path in checkpoints.items():
            kind = branch_kind(name, str(path))
            self.add_module(name, load_module(kind.module_class(), path, **kind.load_overrides))
            self.labels[name] = branch_label(name)
        shown = list(self.labels.values())
        if len(set(shown)) != len(shown) or FUSED in shown:
            raise ValueError(f"branch labels must be distinct and not {FUSED!r}: {self.labels}")

    def branch_modules(self) -> list[LightningModule]:
        """The branch modules, in the detector's order."""
        return [getattr(self, name) for name in self.labels]

    @property
    def input_size(self) -> int:
        """The faces' side the branches take: the stage-1 encoder's input size."""
        for module in self.modules():
            size = getattr(module, "img_size", None)
            if isinstance(size, int):
                return size
        raise AttributeError("no branch of this detector records its input size")

    def branch_scores(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """clips (B,T,3,H,W) → per-frame fake probabilities (B,T): ``fused`` and one per
        branch label."""
        if clips.ndim == 4:
            clips = clips.unsqueeze(1)
        scores = {label: getattr(self, name).frame_probabilities(clips)
                  for name, label in self.labels.items()}
        return {FUSED: fuse(scores), **scores}

    def score_batch(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.branch_scores(batch["image"])
