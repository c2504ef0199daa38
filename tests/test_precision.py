"""Every stage in ``bf16-mixed`` on the CPU: two training steps each (and the detector's test),
through the real CLI, configs, data module and caches. Autocast runs matmuls and convolutions in
bfloat16 and catches dtype mismatches that fp32 hides. Stage 2 trains here on pseudo-fakes
(``fake_source``), so the switch is exercised end to end too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from deepfakemae.cli import main
from deepfakemae.modules.checkpoints import load_module
from deepfakemae.modules.finetune import FinetuneModule
from deepfakemae.modules.mapping import MappingModule
from deepfakemae.modules.pretrain import MAEPretrainModule
from tests.conftest import ffpp_fixture_sources

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
BF16 = ["--data.init_args.img_size=64", "--data.init_args.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false"]
STEPS = ["--trainer.max_steps=2"]


def _test_set(root: Path) -> str:
    return (f"--data.init_args.test=[{{name: celebdf, cache: '{root}/cache/celebdf', "
            "dataset: celebdf, split: test}]")


def _mapping_args(root: Path, meta: bool, run_dir: Path) -> list[str]:
    return ["fit", "-c", str(EXP / "mapping.yaml"), *BF16, *STEPS,
            "--model.init_args.pretrained_backbone=false", "--data.init_args.batch_size=8",
            f"--model.init_args.meta_learning={str(meta).lower()}",
            f"--model.init_args.mae_checkpoint={root}/runs/pretrain/checkpoints/last.ckpt",
            "--data.init_args.fake_source=pseudo", f"--trainer.default_root_dir={run_dir}",
            _test_set(root), *ffpp_fixture_sources(root / "cache")]


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory, ffpp_cache, celebdf_cache):
    """Stage 1, Finetuning (dataset + pseudo-fakes) and the meta-learned Mapping Network
    (pseudo-fakes only), two bf16-mixed steps each, under one RUN_DIR."""
    root = tmp_path_factory.mktemp("bf16")
    cache_dir = root / "cache"
    cache_dir.mkdir()
    (cache_dir / "ffpp_c23").symlink_to(ffpp_cache)
    (cache_dir / "celebdf").symlink_to(celebdf_cache)
    mp = pytest.MonkeyPatch()
    mp.setenv("CACHE_DIR", str(cache_dir))
    mp.setenv("RUN_DIR", str(root / "runs"))
    mp.setenv("WANDB_MODE", "offline")
    mp.chdir(root)
    try:
        assert main(["fit", "-c", str(EXP / "pretrain.yaml"), *BF16, *STEPS,
                     "--model.init_args.preset=mae_vit_micro", "--data.init_args.batch_size=4",
                     "--model.init_args.init_weights=null"]) == 0
        assert main(["fit", "-c", str(EXP / "finetune.yaml"), *BF16, *STEPS,
                     "--data.init_args.batch_size=4", "--data.init_args.fake_source=both",
                     _test_set(root), *ffpp_fixture_sources(root / "cache")]) == 0
        assert main(_mapping_args(root, True, root / "runs" / "mapping")) == 0
        yield root
    finally:
        mp.undo()


@pytest.fixture()
def bf16_env(bf16_runs, monkeypatch) -> Path:
    """``bf16_runs`` with its CACHE_DIR / RUN_DIR set again for one test."""
    monkeypatch.setenv("CACHE_DIR", str(bf16_runs / "cache"))
    monkeypatch.setenv("RUN_DIR", str(bf16_runs / "runs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(bf16_runs)
    return bf16_runs


def _two_finite_fp32_steps(module_cls: type, last: Path) -> None:
    """The run was configured bf16-mixed, made two optimizer steps and holds finite fp32
    weights (autocast computes in bf16; parameters stay fp32)."""
    config = yaml.safe_load((last.parents[1] / "config.yaml").read_text())
    assert config["trainer"]["precision"] == "bf16-mixed"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    overrides = {} if module_cls is MAEPretrainModule else {"mae_checkpoint": None}
    module = load_module(module_cls, last, **overrides)
    for name, p in module.state_dict().items():
        if p.is_floating_point():
            assert p.dtype == torch.float32, f"{name} is stored as {p.dtype}"
            assert torch.isfinite(p).all(), f"{name} is not finite after bf16 steps"


@pytest.mark.parametrize("stage, module_cls", [("pretrain", MAEPretrainModule),
                                               ("finetune", FinetuneModule),
                                               ("mapping", MappingModule)])
def test_training_stages_take_bf16_steps(bf16_runs, stage, module_cls):
    _two_finite_fp32_steps(module_cls, bf16_runs / "runs" / stage / "checkpoints" / "last.ckpt")


def test_mapping_without_meta_learning_bf16_steps(bf16_env):
    run_dir = bf16_env / "runs_plain_mapping"
    assert main(_mapping_args(bf16_env, False, run_dir)) == 0
    _two_finite_fp32_steps(MappingModule, run_dir / "checkpoints" / "last.ckpt")


def test_detector_bf16_test(bf16_env):
    assert main(["test", "-c", str(EXP / "detector.yaml"), *BF16, _test_set(bf16_env)]) == 0
    results = json.loads((bf16_env / "runs/detector/results_test.json").read_text())
    for branch in ("fused", "F", "M"):
        assert math.isfinite(results["celebdf"][f"{branch}/auc"]), branch
