"""The `deepfakemae` command dispatches its subcommands."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfakemae.cli import main


def test_usage_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "test", "score", "predict", "preprocess"):
        assert command in out


def test_unknown_command_fails(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_runs_lightning_help():
    out = subprocess.run([sys.executable, "-m", "deepfakemae.cli", "fit", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--trainer" in out.stdout and "--model" in out.stdout


# -- checkpoints are checked before any model is built -----------------------------------------

EXP = Path(__file__).resolve().parents[1] / "experiments"
FROM_SCRATCH = ["--model.init_args.init_weights=null"]  # no MAE weights download in tests


def save_module_checkpoint(module, path: Path) -> Path:
    """A checkpoint as Lightning writes it: weights, hyper-parameters and the module's own
    ``on_save_checkpoint`` additions (its stage tag)."""
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 1}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Micro stage-1 and stage-2 checkpoints, and broken files."""
    from deepfakemae.modules.finetune import FinetuneModule
    from deepfakemae.modules.pretrain import MAEPretrainModule

    root = tmp_path_factory.mktemp("ckpts")
    pretrain = save_module_checkpoint(MAEPretrainModule(preset="mae_vit_micro"),
                                      root / "pretrain.ckpt")
    finetune = save_module_checkpoint(FinetuneModule(mae_checkpoint=None, preset="mae_vit_micro"),
                                      root / "finetune.ckpt")
    data = pretrain.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (root / "empty.ckpt").write_bytes(b"")
    (root / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "run_folder").mkdir()
    return {"pretrain": pretrain, "finetune": finetune, "truncated": root / "truncated.ckpt",
            "empty": root / "empty.ckpt", "random": root / "random.ckpt",
            "folder": root / "run_folder"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``deepfakemae ARGV`` in this process: exit code and stderr."""
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_fit_refuses_another_stages_checkpoint(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "runs"))
    code, err = run_cli(["fit", "-c", str(EXP / "pretrain.yaml"),
                         "--model.init_args.preset=mae_vit_micro", *FROM_SCRATCH,
                         f"--ckpt_path={checkpoints['finetune']}"], capsys)
    assert code == 2
    assert str(checkpoints["finetune"]) in err and "Finetuning Network" in err
    assert "stage-1 MAE checkpoint" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing was trained or logged


def test_test_refuses_a_pretrain_checkpoint_for_the_detector(checkpoints, capsys):
    code, err = run_cli(["test", "-c", str(EXP / "detector.yaml"),
                         f"--ckpt_path={checkpoints['pretrain']}"], capsys)
    assert code == 2
    assert str(checkpoints["pretrain"]) in err and "stage-1 MAE checkpoint" in err
    assert "drop --ckpt_path" in err


def test_preset_mismatch_is_named(checkpoints, capsys):
    code, err = run_cli(["fit", "-c", str(EXP / "pretrain.yaml"), *FROM_SCRATCH,
                         f"--ckpt_path={checkpoints['pretrain']}"], capsys)
    assert code == 2
    assert "mae_vit_micro" in err and "mae_vit_base_patch16" in err


def test_model_input_checkpoints_are_checked(checkpoints, capsys):
    code, err = run_cli(["fit", "-c", str(EXP / "finetune.yaml"),
                         f"--model.init_args.mae_checkpoint={checkpoints['finetune']}"], capsys)
    assert code == 2
    assert "mae_checkpoint" in err and "stage-1 MAE checkpoint" in err


@pytest.mark.parametrize(("broken", "command"), [("truncated", "fit"), ("empty", "validate"),
                                                 ("random", "test"), ("folder", "validate")])
def test_unreadable_checkpoint_is_a_usage_error(checkpoints, capsys, broken, command):
    code, err = run_cli([command, "-c", str(EXP / "pretrain.yaml"),
                         "--model.init_args.preset=mae_vit_micro", *FROM_SCRATCH,
                         f"--ckpt_path={checkpoints[broken]}"], capsys)
    assert code == 2
    assert str(checkpoints[broken]) in err and "Traceback" not in err
    expected = {"truncated": "truncated, corrupt", "empty": "empty file",
                "random": "truncated, corrupt", "folder": "is a folder"}[broken]
    assert expected in err


def test_matching_checkpoint_passes_the_check(checkpoints):
    from deepfakemae.modules.checkpoints import check_checkpoint

    hparams = check_checkpoint(checkpoints["pretrain"], "MAEPretrainModule", "mae_vit_micro")
    assert hparams["preset"] == "mae_vit_micro"


# -- run folders keep their records --------------------------------------------------------------

MICRO = ["--model.init_args.preset=mae_vit_micro", "--data.init_args.img_size=64", *FROM_SCRATCH]


def test_default_root_dir_moves_every_output(tmp_path, monkeypatch):
    from deepfakemae.lightning_cli import DeepfakeMAECLI

    monkeypatch.setenv("RUN_DIR", str(tmp_path / "runs"))
    elsewhere = tmp_path / "elsewhere"
    cli = DeepfakeMAECLI(args=["-c", str(EXP / "pretrain.yaml"), *MICRO, "--trainer.logger=false",
                               f"--trainer.default_root_dir={elsewhere}"], run=False)
    (checkpoint,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "FinalModelCheckpoint"]
    assert Path(checkpoint.dirpath) == elsewhere / "checkpoints"
    cli = DeepfakeMAECLI(args=["-c", str(EXP / "finetune.yaml"), "--data.init_args.img_size=64",
                               "--model.init_args.mae_checkpoint=null",
                               "--model.init_args.preset=mae_vit_micro",
                               f"--trainer.default_root_dir={elsewhere}"], run=False)
    assert Path(cli.trainer.loggers[0].save_dir) == elsewhere
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_is_loaded_weights_only_unless_told(tmp_path, monkeypatch):
    from deepfakemae.lightning_cli import DeepfakeMAECLI
    from deepfakemae.runstate import release_lock

    class ParseOnly(DeepfakeMAECLI):  # parse and build as `deepfakemae fit` does, train nothing
        def _run_subcommand(self, subcommand: str) -> None:
            self.ran = subcommand

    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    base = ["fit", "-c", str(EXP / "pretrain.yaml"), *MICRO, "--trainer.logger=false"]
    for extra, want in (([], True), (["--weights_only=false"], False)):
        cli = ParseOnly(args=[*base, *extra])
        release_lock(tmp_path / "pretrain")
        assert cli.ran == "fit" and cli.config.fit.weights_only is want


def test_fit_refuses_to_train_over_a_finished_run(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    last = tmp_path / "pretrain" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(checkpoints["pretrain"].read_bytes())
    code, err = run_cli(["fit", "-c", str(EXP / "pretrain.yaml"), *MICRO], capsys)
    assert code == 2
    assert str(last) in err and "--fresh" in err and f"--ckpt_path {last}" in err
    assert "Traceback" not in err


def test_a_missing_face_cache_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "no_cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code, err = run_cli(["fit", "-c", str(EXP / "pretrain.yaml"), *MICRO,
                         "--trainer.logger=false", "--trainer.max_steps=1"], capsys)
    assert code == 2
    assert "no face cache" in err and str(tmp_path / "no_cache") in err
    assert "Traceback" not in err
