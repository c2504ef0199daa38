"""The detector's branches as data: one registry of branch name → the module that trains it.

A branch is a stage-2 network the fused detector averages (paper §3.2). Its registry name is
also its stage name in plans (``<RUN_DIR>/<name>/checkpoints/last.ckpt``) and its checkpoint
argument (``<name>_checkpoint``); its ``label`` is the short name of its scores in results,
CSV columns and tables (``F/auc``, ``M`` columns). Adding a branch kind: its LightningModule,
one entry here, its stage config in ``experiments/`` and a ``<name>_checkpoint`` argument of
:class:`~deepfakemae.modules.detector.DualNetworkDetector`. Light on purpose: no torch import.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: the label of the fused score (the mean of the branches' probabilities)
FUSED = "fused"


@dataclass(frozen=True)
class BranchKind:
    """What a branch is: the class path of its LightningModule, its short label, its name in
    words, and the hyper-parameters replaced when its checkpoint is loaded for scoring."""

    module: str
    label: str
    title: str
    load_overrides: Mapping[str, object] = field(default_factory=dict)

    @property
    def module_name(self) -> str:
        """The module's class name (the tag its checkpoints carry)."""
        return self.module.rsplit(".", 1)[-1]

    def module_class(self) -> type:
        """The LightningModule class (imported on first use)."""
        package, _, name = self.module.rpartition(".")
        return getattr(importlib.import_module(package), name)


#: branch name -> kind, in the detector's (and the plans') order
BRANCHES: dict[str, BranchKind] = {
    "finetune": BranchKind("deepfakemae.modules.finetune.FinetuneModule", "F",
                           "Finetuning Network", {"mae_checkpoint": None}),
    # the checkpoint holds every weight: no stage-1 file, no ImageNet download needed
    "mapping": BranchKind("deepfakemae.modules.mapping.MappingModule", "M", "Mapping Network",
                          {"mae_checkpoint": None, "pretrained_backbone": False}),
}


def kind_of_module(module_name: str) -> BranchKind | None:
    """The branch kind whose module class is called ``module_name``, or None."""
    return next((k for k in BRANCHES.values() if k.module_name == module_name), None)


def branch_label(name: str) -> str:
    """The label of branch ``name``: the registry's for a registered name, else the name."""
    return BRANCHES[name].label if name in BRANCHES else name


def ordered_labels(found: Iterable[str]) -> list[str]:
    """Score labels in display order: fused, the registered branches, then others sorted."""
    found = set(found)
    known = [FUSED, *(k.label for k in BRANCHES.values())]
    return [b for b in known if b in found] + sorted(found - set(known))
