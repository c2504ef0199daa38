"""Public choices of the LightningModules are ``Literal`` types drawn from their one source, so
the CLI rejects a bad value before anything is built."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from deepfakemae.cli import main
from deepfakemae.masking import STRATEGIES, VARIANTS
from deepfakemae.models.classifier import Pooling
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule
from deepfakemae.modules.pretrain import MAEPretrainModule

EXP = Path(__file__).resolve().parents[1] / "experiments"


def literal_values(hint) -> set:
    """The values a (possibly optional, possibly nested) ``Literal`` hint allows."""
    if typing.get_origin(hint) is typing.Literal:
        return set(typing.get_args(hint))
    return set().union(*(literal_values(arg) for arg in typing.get_args(hint)))


@pytest.mark.parametrize("module", [MAEPretrainModule, MappingModule])
def test_masking_choices_are_the_masking_registry(module):
    hints = typing.get_type_hints(module.__init__)
    assert literal_values(hints["mask_strategy"]) == set(STRATEGIES)
    assert literal_values(hints["part_variant"]) == set(VARIANTS)


def test_other_choices_are_literals():
    finetune = typing.get_type_hints(FinetuneModule.__init__)
    assert literal_values(finetune["pooling"]) == {"mean", "cls"}
    assert set(typing.get_args(Pooling)) == {"mean", "cls"}
    hints = typing.get_type_hints(MappingModule.__init__)
    assert literal_values(hints["target"]) == {"masked", "masked_decoder", "unmasked"}
    assert literal_values(hints["ref_source"]) == {"meta_test", "meta_train"}
    assert literal_values(hints["bn_stats"]) == {"theta", "theta_sel", "none"}
    assert literal_values(hints["classifier_input"]) == {"features", "mapped", "both"}


def test_cli_rejects_unknown_mask_strategy(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(EXP / "pretrain.yaml"), "--model.init_args.mask_strategy=bogus",
              "--print_config"])
    assert exit_info.value.code != 0  # --print_config alone would exit 0
    err = capsys.readouterr().err
    assert "mask_strategy" in err and "bogus" in err
    assert all(name in err for name in STRATEGIES), err


def test_cli_rejects_unknown_pooling(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(EXP / "finetune.yaml"), "--model.init_args.pooling=max",
              "--print_config"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "pooling" in err and "'mean', 'cls'" in err, err
