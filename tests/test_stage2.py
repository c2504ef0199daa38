"""Stage 2 end to end on tiny real-face caches: both branches, the fused detector, DDP-exact AUC."""

from __future__ import annotations

import copy
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
from deepfakemae.results import read_results
from tests.conftest import ffpp_fixture_sources

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
SMALL = ["--data.init_args.img_size=64", "--data.init_args.num_workers=0",
         "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false",
         "--trainer.enable_progress_bar=false"]
RANDOM_INIT = ["--model.init_args.pretrained_backbone=false"]  # no ImageNet download in tests


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
                     "--model.init_args.preset=mae_vit_micro", "--data.init_args.batch_size=4",
                     "--model.init_args.init_weights=null"]) == 0
        assert main(["fit", "-c", str(EXP / "finetune.yaml"), *SMALL, "--trainer.max_steps=2",
                     "--data.init_args.batch_size=4", eval_sets(cache_dir), *ffpp_fixture_sources(cache_dir)]) == 0
        assert main(["fit", "-c", str(EXP / "mapping.yaml"), *SMALL, *RANDOM_INIT,
                     "--trainer.max_steps=2", "--data.init_args.batch_size=8",
                     "--model.init_args.image_log_every_n_steps=1",
                     eval_sets(cache_dir), *ffpp_fixture_sources(cache_dir)]) == 0
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
    # our summary, not Lightning's tables that repeat every set under every DataLoader column
    assert "| test set | fused AUC | F AUC | M AUC | videos |" in out.stdout
    assert "DataLoader" not in out.stdout and "Tip:" not in out.stdout + out.stderr
    assert "LeafSpec" not in out.stderr
    assert str(root / "runs" / "detector" / "results_test.json") in out.stdout
    return read_results(root / "runs" / "detector" / "results_test.json").sets


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


def _meta_batch(real_videos: int, frames_per_real: int, fakes_per_domain: int,
                domains: tuple[int, ...] = (1, 2, 3, 4)) -> dict:
    """A balanced batch dict; real videos contribute several frames, fakes one each."""
    keys, frames, labels, doms = [], [], [], []
    for v in range(real_videos):
        for f in range(frames_per_real):
            keys.append(f"ffpp/real/{v:03d}"), frames.append(7 * f), labels.append(0), doms.append(0)
    for d in domains:
        for v in range(fakes_per_domain):
            keys.append(f"ffpp/m{d}/{v:03d}"), frames.append(3), labels.append(1), doms.append(d)
    n = len(keys)
    return {"label": torch.tensor(labels), "domain": torch.tensor(doms),
            "image": torch.arange(float(n))[:, None], "video_key": keys,
            "frame_index": torch.tensor(frames)}


def _sample_keys(part: dict) -> list[tuple[str, int]]:
    return list(zip(part["video_key"], part["frame_index"].tolist(), strict=True))


@pytest.mark.parametrize("ref_source", ["meta_test", "meta_train"])
def test_meta_split_gives_four_disjoint_parts(ref_source):
    """Paper §3.2.2: the meta-test term mixes meta-test with *another* meta-train-domain batch;
    T_ref ("validated by sampling ... from the Meta-test") comes from the meta-test side."""
    batch = _meta_batch(real_videos=16, frames_per_real=2, fakes_per_domain=8)  # 64 samples
    for seed in range(5):
        split = meta_split(batch, np.random.default_rng(seed), ref_source=ref_source)
        parts = {"train": split.train, "ref": split.ref, "mix": split.mix, "test": split.test}
        keys = {name: _sample_keys(p) for name, p in parts.items()}
        assert sorted(sum(keys.values(), [])) == sorted(_sample_keys(batch))  # a partition
        videos = {name: {k for k, _ in ks} for name, ks in keys.items()}
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not videos[a] & videos[b], (a, b)  # no video (hence no sample) shared
        test_domains = set(split.test["domain"][split.test["label"] == 1].tolist())
        assert len(test_domains) == 1
        ref_domains = set(split.ref["domain"][split.ref["label"] == 1].tolist())
        assert ref_domains == test_domains if ref_source == "meta_test" else \
            not ref_domains & test_domains
        for name in ("train", "mix", "ref"):
            part = parts[name]
            assert set(part["label"].tolist()) == {0, 1}
            if name != "ref":
                assert not test_domains & set(part["domain"][part["label"] == 1].tolist())
        # per class: 8 fakes of the held-out method and 8 real frames on the meta-test side
        expected = {"meta_test": {"test": 4, "ref": 4, "mix": 4, "train": 20},
                    "meta_train": {"test": 8, "ref": 8, "mix": 8, "train": 8}}[ref_source]
        for label in (0, 1):
            for name, n in expected.items():
                assert (parts[name]["label"] == label).sum() == n, (name, label)


def test_meta_split_single_domain_and_tiny_batches():
    one = meta_split(_meta_batch(10, 1, 10, domains=(1,)), np.random.default_rng(0))
    # cross-manipulation protocol: fakes split 8:2, the two meta-test-side fakes halved into
    # meta-test and T_ref
    assert (one.test["label"] == 1).sum() == (one.ref["label"] == 1).sum() == 1
    assert not set(_sample_keys(one.mix)) & set(_sample_keys(one.train))
    assert not set(_sample_keys(one.ref)) & set(_sample_keys(one.test))
    # two videos per class: T_ref gets its own samples, the mix batch falls back to the inner batch
    small = meta_split(_meta_batch(3, 1, 1, domains=(1, 2, 3)), np.random.default_rng(0))
    assert not set(_sample_keys(small.ref)) & set(_sample_keys(small.train))
    assert _sample_keys(small.mix) == _sample_keys(small.train)
    for part in small:
        assert set(part["label"].tolist()) == {0, 1}
    tiny = meta_split(_meta_batch(2, 1, 1, domains=(1, 2)), np.random.default_rng(0))
    assert _sample_keys(tiny.mix) == _sample_keys(tiny.train)  # nothing to spare on either side:
    assert _sample_keys(tiny.ref) == _sample_keys(tiny.test)  # T_ref stays in the meta-test domain
    old = meta_split(_meta_batch(2, 1, 1, domains=(1, 2)), np.random.default_rng(0),
                     ref_source="meta_train")
    assert _sample_keys(old.ref) == _sample_keys(old.mix) == _sample_keys(old.train)
    assert meta_split(_meta_batch(1, 4, 1), np.random.default_rng(0)) is None  # one real video


def test_mapping_without_meta_learning_trains(trained, monkeypatch):
    """Table 6's "w/o meta" column: plain batches through the same module and config."""
    monkeypatch.setenv("CACHE_DIR", str(trained / "cache"))
    monkeypatch.setenv("RUN_DIR", str(trained / "runs_plain"))
    monkeypatch.chdir(trained)
    mae = _ckpt(trained, "pretrain")
    assert main(["fit", "-c", str(EXP / "mapping.yaml"), *SMALL, *RANDOM_INIT,
                 "--trainer.max_steps=2", "--data.init_args.batch_size=8",
                 "--model.init_args.meta_learning=false",
                 f"--model.init_args.mae_checkpoint={mae}",
                 eval_sets(trained / "cache"),
                 *ffpp_fixture_sources(trained / "cache")]) == 0
    last = trained / "runs_plain" / "mapping" / "checkpoints" / "last.ckpt"
    module = load_module(MappingModule, last, mae_checkpoint=None)
    assert module.hparams.meta_learning is False


@pytest.fixture(scope="module")
def lips_stage1(tmp_path_factory) -> Path:
    """A stage-1 checkpoint (micro preset) trained one step with lips masking at 25 %."""
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from deepfakemae.masking import synthetic_landmarks
    from deepfakemae.modules.pretrain import MAEPretrainModule

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(4, 3, 64, 64, generator=g),
             "landmarks": synthetic_landmarks(4, 64, generator=g)}
    module = MAEPretrainModule(preset="mae_vit_micro", mask_strategy="lips", mask_ratio=0.25,
                               image_log_every_n_steps=0)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    path = tmp_path_factory.mktemp("lips") / "stage1.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_masked_target_takes_masking_from_stage1(lips_stage1):
    """Tables 4 and 5 vary stage 1; a masked Mapping target follows unless told otherwise."""
    from deepfakemae.masking import FacialPartMasker, synthetic_landmarks

    module = MappingModule(mae_checkpoint=str(lips_stage1), target="masked", map_size=16)
    module.setup("fit")
    hp = module.hparams
    assert (hp.mask_strategy, hp.mask_ratio, hp.part_variant) == ("lips", 0.25, "algorithm1")
    assert (module._masker.strategy, module._masker.ratio) == ("lips", 0.25)
    # the target is the MAE's reconstruction under exactly that masking
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    landmarks = synthetic_landmarks(3, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    target = module.map_target(images, landmarks)
    torch.manual_seed(5)
    mask = FacialPartMasker("lips", 0.25, "algorithm1", 64, 8)(landmarks).mask
    with torch.no_grad():
        expected = module._mae.reconstruct(images, mask)
    expected = torch.nn.functional.interpolate(expected, size=(16, 16), mode="bilinear",
                                               align_corners=False, antialias=True)
    torch.testing.assert_close(target, expected)
    # explicit values override stage 1; the unmasked ablation uses no masking
    override = MappingModule(mae_checkpoint=str(lips_stage1), target="masked", mask_ratio=0.75)
    override.setup("fit")
    assert (override.hparams.mask_strategy, override.hparams.mask_ratio) == ("lips", 0.75)
    assert MappingModule().hparams.target == "masked"  # the default
    plain = MappingModule(mae_checkpoint=str(lips_stage1), target="unmasked")
    plain.setup("fit")
    assert plain._masker is None and plain.hparams.mask_strategy is None


@pytest.mark.parametrize("target", ["masked", "masked_decoder", "unmasked"])
def test_mapping_target_visible_patches_from_the_input_masked_from_the_decoder(lips_stage1,
                                                                               target):
    from deepfakemae.masking import FacialPartMasker, synthetic_landmarks

    module = MappingModule(mae_checkpoint=str(lips_stage1), target=target, map_size=64)
    module.setup("fit")
    mae = module._mae
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    landmarks = synthetic_landmarks(2, 64, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    got = mae.patchify(module.map_target(images, landmarks))  # (B, L, P)
    torch.manual_seed(5)
    mask = FacialPartMasker("lips", 0.25, "algorithm1", 64, 8)(landmarks).mask
    with torch.no_grad():
        if target == "unmasked":
            latent, layout = mae.forward_encoder(images, None)
        else:
            latent, layout = mae.forward_encoder(images, mask)
        decoded = mae.forward_decoder(latent, layout)
    given = mae.patchify(images)
    if target == "unmasked":
        torch.testing.assert_close(got, decoded, atol=1e-5, rtol=1e-4)
        return
    assert mask.any(1).all() and (~mask).any(1).all()
    torch.testing.assert_close(got[mask], decoded[mask], atol=1e-5, rtol=1e-4)
    if target == "masked":  # visible patches are the input's pixels
        torch.testing.assert_close(got[~mask], given[~mask], atol=1e-5, rtol=1e-4)
    else:  # the decoder's own output at visible positions too, which is not the input
        torch.testing.assert_close(got[~mask], decoded[~mask], atol=1e-5, rtol=1e-4)
        assert (got[~mask] - given[~mask]).abs().mean() > 0.1


def test_paper_configs_follow_the_paper_and_the_demo_stays_offline():
    import yaml

    def init_args(path: Path, section: str) -> dict:
        return yaml.safe_load(path.read_text())[section]["init_args"]

    assert init_args(EXP / "pretrain.yaml", "data")["augment"] is False  # §4.1 names none
    mapping = init_args(EXP / "mapping.yaml", "model")
    assert mapping["target"] == "masked"  # §1, §3.2.2, Fig. 1: reconstruct a masked face
    assert mapping["ref_source"] == "meta_test"  # §3.2.2: validated on the Meta-test
    assert mapping["pretrained_backbone"] is True
    for stage in ("finetune", "mapping"):  # §4.1 names no stage-2 augmentation
        assert init_args(EXP / f"{stage}.yaml", "data")["augment"] is False
    assert "mae_pretrain_vit_base_full" in init_args(EXP / "pretrain.yaml", "model")["init_weights"]
    assert init_args(EXP / "demo" / "pretrain.yaml", "model")["init_weights"] is None
    assert not {"mask_strategy", "mask_ratio", "part_variant"} & set(mapping)  # stage 1 decides
    assert init_args(EXP / "demo" / "mapping.yaml", "model")["pretrained_backbone"] is False


def test_cli_rejects_unknown_mapping_target(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(EXP / "mapping.yaml"), *RANDOM_INIT,
              "--model.init_args.target=pixels", "--print_config"])
    assert exit_info.value.code != 0  # --print_config alone would exit 0
    err = capsys.readouterr().err
    assert "target" in err and "pixels" in err


def test_evaluation_keeps_the_training_runs_records(trained, monkeypatch):
    """``validate --ckpt_path`` of a training run writes its own config and run info beside
    the training run's, which stay as they were."""
    monkeypatch.setenv("CACHE_DIR", str(trained / "cache"))
    monkeypatch.setenv("RUN_DIR", str(trained / "runs"))
    monkeypatch.chdir(trained)
    stage = trained / "runs" / "finetune"
    before = {name: (stage / name).read_bytes() for name in ("config.yaml", "run_info.json")}
    assert main(["validate", "-c", str(EXP / "finetune.yaml"), *SMALL, "--trainer.logger=false",
                 f"--ckpt_path={stage / 'checkpoints' / 'last.ckpt'}",
                 eval_sets(trained / "cache"),
                 *ffpp_fixture_sources(trained / "cache")]) == 0
    assert {name: (stage / name).read_bytes() for name in before} == before
    assert "validate" in (stage / "run_info_validate.json").read_text()
    assert "FinetuneModule" in (stage / "config_validate.yaml").read_text()


def test_finetune_ensemble_members_learn_from_their_own_slice_and_average():
    torch.manual_seed(0)
    module = FinetuneModule(mae_checkpoint=None, preset="mae_vit_micro", ensemble=3)
    module.log = lambda *a, **k: None  # no trainer attached
    assert len(module.members) == 3 and len(list(module.extra_members)) == 2
    # every member starts from the same encoder weights, in its own copy, with its own head
    enc = [dict(m.encoder.named_parameters()) for m in module.members]
    assert all(torch.equal(enc[0][n], e[n]) for e in enc[1:] for n in enc[0])
    assert all(enc[0][n] is not enc[1][n] for n in enc[0])
    assert not torch.equal(module.members[0].head[-1].weight, module.members[1].head[-1].weight)
    clips = torch.randn(6, 2, 3, 64, 64)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    alone = copy.deepcopy(module.members[1])
    module.training_step({"image": clips, "label": labels}, 0).backward()
    torch.nn.functional.cross_entropy(alone(clips[2:4]), labels[2:4]).backward()
    for (name, p), q in zip(module.members[1].named_parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)  # member 1 saw slice 1 only
    with torch.no_grad():
        expected = torch.stack([m(clips).softmax(-1)[:, 1] for m in module.members]).mean(0)
        torch.testing.assert_close(module.fake_probability(clips), expected)
    # the paper's single network keeps its checkpoint layout
    single = FinetuneModule(mae_checkpoint=None, preset="mae_vit_micro")
    assert not any(k.startswith("extra_members") for k in single.state_dict())
    with pytest.raises(ValueError, match="ensemble"):
        FinetuneModule(mae_checkpoint=None, preset="mae_vit_micro", ensemble=0)
