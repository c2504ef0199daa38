"""Branches as data: a detector of three branches built from a config, fused = their mean; the
plan runner and the scoring command read the branch list from the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepfakemae.branches import BRANCHES, FUSED, ordered_labels
from deepfakemae.lightning_cli import DeepfakeMAECLI
from deepfakemae.modules.checkpoints import MODULE_TAG, CheckpointError
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule
from deepfakemae.plans import BRANCH_STAGES, STAGE_INPUTS, STAGES

EXP = Path(__file__).resolve().parents[1] / "experiments"


def _save(module: torch.nn.Module, path: Path) -> Path:
    """A checkpoint as a stage-2 fit leaves it (weights, hyper-parameters, module tag)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                MODULE_TAG: type(module).__name__}, path)
    return path


@pytest.fixture(scope="module")
def branch_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny branches: two Finetuning Networks (different weights), one Mapping."""
    root = tmp_path_factory.mktemp("branches")
    torch.manual_seed(0)
    first = _save(FinetuneModule(preset="mae_vit_micro"), root / "finetune.ckpt")
    second = _save(FinetuneModule(preset="mae_vit_micro"), root / "finetune_b.ckpt")
    mapping = _save(MappingModule(pretrained_backbone=False), root / "mapping.ckpt")
    return {"finetune": first, "finetune_b": second, "mapping": mapping}


def test_three_branch_detector_from_a_config_fuses_the_mean(branch_checkpoints, tmp_path,
                                                            monkeypatch):
    """The paper's detector config with one more branch: two Finetuning Networks, a Mapping."""
    config = tmp_path / "three_branches.yaml"
    config.write_text("model:\n  init_args:\n    branches:\n" + "".join(
        f"      {name}: {path}\n" for name, path in branch_checkpoints.items()))
    monkeypatch.setattr("sys.argv", ["deepfakemae"])
    cli = DeepfakeMAECLI(["-c", str(EXP / "detector.yaml"), "-c", str(config),
                          "--trainer.logger=false", "--trainer.accelerator=cpu",
                          f"--trainer.default_root_dir={tmp_path}"], run=False)
    detector = cli.model
    assert isinstance(detector, DualNetworkDetector)
    assert detector.labels == {"finetune": "F", "mapping": "M", "finetune_b": "finetune_b"}
    clips = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        scores = detector.eval().branch_scores(clips)
        alone = {label: getattr(detector, name).frame_probabilities(clips)
                 for name, label in detector.labels.items()}
    assert list(scores) == [FUSED, "F", "M", "finetune_b"]
    for label, probabilities in alone.items():
        assert probabilities.shape == (2, 5)
        torch.testing.assert_close(scores[label], probabilities)
    assert not torch.allclose(alone["F"], alone["finetune_b"])  # two different networks
    torch.testing.assert_close(scores[FUSED], (alone["F"] + alone["M"] + alone["finetune_b"]) / 3)


def test_a_branch_name_needs_its_own_kind(branch_checkpoints):
    with pytest.raises(CheckpointError, match="MappingModule"):
        DualNetworkDetector(branches={"mapping": str(branch_checkpoints["finetune"])})
    with pytest.raises(ValueError, match="at least one branch"):
        DualNetworkDetector()


def test_the_registry_drives_stages_and_labels():
    assert BRANCH_STAGES == tuple(BRANCHES) and STAGES == ("pretrain", *BRANCHES, "detector")
    assert STAGE_INPUTS["detector"] == tuple((f"model.init_args.{b}_checkpoint", b)
                                             for b in BRANCHES)
    assert ordered_labels({"M", "x", FUSED, "F"}) == [FUSED, "F", "M", "x"]
