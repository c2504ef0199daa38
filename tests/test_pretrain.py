"""Stage 1 through the real CLI, datamodule and cache: fit, run records, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfakemae.cli import main
from deepfakemae.modules.pretrain import MAEPretrainModule

REPO = Path(__file__).resolve().parents[1]
MICRO = ["--model.init_args.preset=mae_vit_micro", "--model.init_args.init_weights=null",
         "--data.init_args.img_size=64",
         "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
         "--trainer.accelerator=cpu", "--trainer.precision=32-true"]


@pytest.fixture()
def run_env(tmp_path, ffpp_cache, monkeypatch):
    """CACHE_DIR/RUN_DIR as the README documents them, pointing at a tiny real-face cache."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "ffpp_c23").symlink_to(ffpp_cache)
    monkeypatch.setenv("CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_records_config_run_info_figures_and_resumes(run_env):
    runs = run_env / "runs" / "pretrain"
    args = ["fit", "-c", str(REPO / "experiments/pretrain.yaml"), *MICRO,
            "--trainer.max_steps=3", "--model.init_args.image_log_every_n_steps=2"]
    assert main(args) == 0
    assert (runs / "config.yaml").exists()
    info = json.loads((runs / "run_info.json").read_text())
    assert info["packages"]["torch"] and "commit" in info["git"]
    assert list((runs / "figures").glob("train_reconstruction_*.png"))
    assert list((runs / "wandb").glob("offline-run-*")), "W&B offline run missing"
    last = runs / "checkpoints" / "last.ckpt"
    assert last.exists()

    # resume: the step counter continues from the checkpoint
    assert main([*args[:-2], "--trainer.max_steps=5", f"--ckpt_path={last}"]) == 0
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 5


def test_checkpoint_reload_gives_same_reconstruction(run_env):
    # validation (and so a `last` save) at step 2 only; training stops at step 3
    assert main(["fit", "-c", str(REPO / "experiments/pretrain.yaml"), *MICRO,
                 "--trainer.max_steps=3", "--trainer.check_val_every_n_epoch=2",
                 "--trainer.logger=false"]) == 0
    last = run_env / "runs" / "pretrain" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    module = MAEPretrainModule.load_from_checkpoint(last, map_location="cpu", weights_only=True)
    module.eval()
    images = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, module.model.num_patches, dtype=torch.bool)
    mask[:, :10] = True
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    again = MAEPretrainModule(**module.hparams)
    again.load_state_dict(state)
    again.eval()
    torch.testing.assert_close(module.model.reconstruct(images, mask),
                               again.model.reconstruct(images, mask))


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(run_env):
    """A real 2-process gloo DDP run through the console command."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "deepfakemae.cli", "fit", "-c", str(REPO / "experiments/pretrain.yaml"),
         *MICRO, "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=2",
         "--trainer.logger=false", "--trainer.enable_progress_bar=false"],
        env=env, cwd=run_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "world_size: 2" in out.stderr + out.stdout or "GLOBAL_RANK: 1" in out.stderr + out.stdout
    assert (run_env / "runs" / "pretrain" / "checkpoints" / "last.ckpt").exists()


def test_stage1_starts_from_a_full_mae_checkpoint_encoder_and_decoder(tmp_path):
    """The paper config's init: the MAE authors' checkpoint layout ({"model": state dict}) with
    its decoder, as `mae_pretrain_vit_base_full.pth` has it (here at the micro preset's size)."""
    from deepfakemae.models.mae import create_mae

    torch.manual_seed(3)
    source = create_mae("mae_vit_micro")
    path = tmp_path / "mae_full.pth"
    torch.save({"model": source.state_dict()}, path)
    module = MAEPretrainModule(preset="mae_vit_micro", init_weights=str(path))
    fresh = MAEPretrainModule(preset="mae_vit_micro")
    own = module.model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "decoder_blocks.0.mlp.fc1.weight",
                "decoder_pred.weight", "mask_token", "cls_token"):
        torch.testing.assert_close(own[key], source.state_dict()[key])
        assert not torch.equal(fresh.model.state_dict()[key], own[key]) or key == "mask_token"
    # encoder-only weights (timm's ``vit_base_patch16_224.mae`` layout) fill the encoder only
    encoder_only = {k: v for k, v in source.state_dict().items() if not k.startswith("decoder")}
    torch.save(encoder_only, tmp_path / "encoder.pth")
    half = MAEPretrainModule(preset="mae_vit_micro", init_weights=str(tmp_path / "encoder.pth"))
    torch.testing.assert_close(half.model.state_dict()["blocks.0.attn.qkv.weight"],
                               own["blocks.0.attn.qkv.weight"])
    assert not torch.equal(half.model.state_dict()["decoder_pred.weight"], own["decoder_pred.weight"])


def test_missing_stage1_weights_name_the_file_and_the_switch(tmp_path, run_env, capsys):
    args = [a for a in MICRO if "init_weights" not in a]
    missing = tmp_path / "weights" / "mae_pretrain_vit_base_full.pth"
    code = main(["fit", "-c", str(REPO / "experiments/pretrain.yaml"), *args,
                 f"--model.init_args.init_weights={missing}", "--trainer.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err and "--model.init_args.init_weights null" in err
    assert "mae_pretrain_vit_base_full.pth" in err and "Traceback" not in err
    with pytest.raises(Exception, match="preset"):  # weights of another size: say which preset
        torch.save({"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, tmp_path / "x.pth")
        MAEPretrainModule(preset="mae_vit_micro", init_weights=str(tmp_path / "x.pth"))
