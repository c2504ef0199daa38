"""Stage 2 end to end on tiny real-face caches: both branches, the fused detector, DDP-exact AUC."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfakemae.cli import main
from deepfakemae.modules.checkpoints import CheckpointError, load_module
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule, meta_split

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
SMALL = ["--data.init_args.img_size=64", "--data.init_args.num_workers=0",
         "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false",
         "--trainer.enable_progress_bar=false"]


def eval_sets(cache_dir: Path) -> str:
    """A ``--data.init_args.test`` override: Celeb-DF and FF++ test caches under ``cache_dir``."""
    return (f"--data.init_args.test=[{{name: celebdf, cache: '{cache_dir}/celebdf', "
            f"dataset: celebdf, split: test}}, {{name: ffpp, cache: '{cache_dir}/ffpp_c23', "
            "dataset: ffpp, split: test}]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ffpp_cache, celebdf_cache):
    """Stage 1 (micro preset) and both stage-2 branches, trained for a few steps via the CLI."""
    root = tmp_path_factory.mktemp("stage2")
    cache_dir = root / "cache"
    cache_dir.mkdir()
    (cache_dir / "ffpp_c23").symlink_to(ffpp_cache)
    (cache_dir / "celebdf").symlink_to(celebdf_cache)
    env = {"CACHE_DIR": str(cache_dir), "RUN_DIR": str(root / "runs"), "WANDB_MODE": "offline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["fit", "-c", str(EXP / "pretrain.yaml"), *SMALL, "--trainer.max_steps=2",
                     "--model.init_args.preset=mae_vit_micro", "--data.init_args.batch_size=4"]) == 0
        assert main(["fit", "-c", str(EXP / "finetune.yaml"), *SMALL, "--trainer.max_steps=2",
                     "--data.init_args.batch_size=4", eval_sets(cache_dir)]) == 0
        assert main(["fit", "-c", str(EXP / "mapping.yaml"), *SMALL, "--trainer.max_steps=2",
                     "--data.init_args.batch_size=8", "--model.init_args.image_log_every_n_steps=1",
                     eval_sets(cache_dir)]) == 0
        yield root
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ckpt(root: Path, stage: str) -> Path:
    return root / "runs" / stage / "checkpoints" / "last.ckpt"


def test_stage2_checkpoints_rebuild_without_stage1(trained):
    finetune = load_module(FinetuneModule, _ckpt(trained, "finetune"), mae_checkpoint=None)
    assert finetune.hparams.preset == "mae_vit_micro"
    mapping = load_module(MappingModule, _ckpt(trained, "mapping"), mae_checkpoint=None)
    assert not any(k.startswith("_mae") for k in mapping.state_dict())  # frozen MAE not saved


def test_wrong_checkpoint_kind_is_named(trained):
    with pytest.raises(CheckpointError, match="MAEPretrainModule"):
        load_module(FinetuneModule, _ckpt(trained, "pretrain"))
    bogus = trained / "bogus.ckpt"
    bogus.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="bogus.ckpt"):
        load_module(MappingModule, bogus)


def test_fused_score_is_the_mean_of_the_branches(trained):
    detector = DualNetworkDetector(str(_ckpt(trained, "finetune")), str(_ckpt(trained, "mapping")))
    detector.eval()
    clips = torch.randn(2, 5, 3, 64, 64)
    with torch.no_grad():
        scores = detector.branch_scores(clips)
        f_alone = detector.finetune.fake_probability(clips)
        m_alone = detector.mapping.fake_probability(clips)
    torch.testing.assert_close(scores["F"], f_alone[:, None].expand(-1, 5))
    torch.testing.assert_close(scores["M"], m_alone)
    torch.testing.assert_close(scores["fused"], (scores["F"] + scores["M"]) / 2)


def _detector_test(root: Path, devices: int, out_dir: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CACHE_DIR=str(root / "cache"),
               RUN_DIR=str(root / "runs"))
    args = [sys.executable, "-m", "deepfakemae.cli", "test", "-c", str(EXP / "detector.yaml"),
            *SMALL[:-2], "--trainer.enable_progress_bar=false", f"--trainer.devices={devices}",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.init_args.save_dir={out_dir}",
            "--data.init_args.eval_batch_size=3", eval_sets(root / "cache")]
    if devices > 1:
        args.append("--trainer.strategy=ddp")
    out = subprocess.run(args, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((root / "runs" / "detector" / "results_test.json").read_text())


@pytest.mark.slow
def test_detector_reports_every_branch_and_ddp_matches_single_process(trained):
    single = _detector_test(trained, 1, "eval1")
    assert set(single) == {"celebdf", "ffpp"}
    for metrics in single.values():
        for branch in ("fused", "F", "M"):
            for name in ("auc", "frame_auc", "video_ap", "video_eer", "video_acc"):
                assert math.isfinite(metrics[f"{branch}/{name}"]), (branch, name)
    assert list((trained / "eval1").rglob("test_roc_*.png"))
    assert list((trained / "eval1").rglob("test_celebdf_activation_maps_*.png"))
    double = _detector_test(trained, 2, "eval2")
    for name in single:
        assert double[name]["num_frames"] == single[name]["num_frames"]
        for key in ("fused/auc", "F/frame_auc", "M/video_ap"):
            assert double[name][key] == pytest.approx(single[name][key], abs=1e-9)


def test_meta_split_separates_domains_and_keeps_both_classes():
    labels = torch.tensor([0] * 8 + [1] * 8)
    domains = torch.tensor([0] * 8 + [1, 1, 2, 2, 3, 3, 4, 4])
    batch = {"label": labels, "domain": domains, "image": torch.arange(16.0)[:, None],
             "video_key": [f"v{i}" for i in range(16)]}
    train, test, ref = meta_split(batch, np.random.default_rng(0))
    fake_train = set(train["domain"][train["label"] == 1].tolist())
    fake_test = set(test["domain"][test["label"] == 1].tolist())
    assert len(fake_test) == 1 and not fake_train & fake_test
    for part in (train, test, ref):
        assert set(part["label"].tolist()) == {0, 1}
    used = train["video_key"] + test["video_key"] + ref["video_key"]
    assert sorted(used) == sorted(batch["video_key"])  # a partition of the batch


def test_mapping_without_meta_learning_trains(trained, monkeypatch):
    """Table 6's "w/o meta" column: plain batches through the same module and config."""
    monkeypatch.setenv("CACHE_DIR", str(trained / "cache"))
    monkeypatch.setenv("RUN_DIR", str(trained / "runs_plain"))
    monkeypatch.chdir(trained)
    mae = _ckpt(trained, "pretrain")
    assert main(["fit", "-c", str(EXP / "mapping.yaml"), *SMALL, "--trainer.max_steps=2",
                 "--data.init_args.batch_size=8", "--model.init_args.meta_learning=false",
                 f"--model.init_args.mae_checkpoint={mae}",
                 eval_sets(trained / "cache")]) == 0
    last = trained / "runs_plain" / "mapping" / "checkpoints" / "last.ckpt"
    module = load_module(MappingModule, last, mae_checkpoint=None)
    assert module.hparams.meta_learning is False
