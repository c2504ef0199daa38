"""Cross-validation: identity-disjoint folds, split overrides, paired sampling, pooled AUCs with
bootstrap intervals checked against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from data_modules import BalancedRealFakeSampler, DeepfakeDataModule, SourceSpec, select_videos
from data_modules.indexes.ffpp import key_split, split_owner, target_real_key
from deepfakemae.crossval import (
    fold_markdown,
    fold_plan,
    make_folds,
    paired_markdown,
    pool_scores,
    results_markdown,
    set_results,
    write_fold_splits,
)
from deepfakemae.metrics import ScoredSet, bootstrap_auc, weighted_auc
from deepfakemae.plans import load_plan
from deepfakemae.results import read_scores_csv, write_scores_csv

PAIRS = [("000", "001"), ("002", "003"), ("004", "005"), ("006", "007"), ("008", "009")]


def _ids(pairs) -> set[str]:
    return {i for p in pairs for i in p}


@pytest.mark.parametrize("k", [3, 5])
def test_folds_are_identity_disjoint_and_test_every_pair_once(k):
    folds = make_folds(PAIRS, k)
    assert len(folds) == k
    tested = [p for f in folds for p in f["test"]]
    assert sorted(tested) == sorted(PAIRS)  # every pair is a test pair exactly once
    for fold in folds:
        train, val, test = (_ids(fold[s]) for s in ("train", "val", "test"))
        assert train and val and test
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == _ids(PAIRS)
    with pytest.raises(ValueError, match="at least 3 folds"):
        make_folds(PAIRS, 2)
    with pytest.raises(ValueError, match="at least 6 id pairs"):
        make_folds(PAIRS, 6)


def test_key_split_and_target_of_ffpp_keys():
    owner = split_owner({"train": [("000", "001")], "test": [("002", "003")]})
    assert key_split("ffpp/c23/real/002", owner) == "test"
    assert key_split("ffpp/c23/FaceSwap/001_000", owner) == "train"
    assert key_split("ffpp/c23/FaceSwap/000_002", owner) == "unassigned"  # identities of 2 splits
    assert key_split("ffpp/c23/real/042", owner) == "unassigned"
    assert key_split("ffpp/c23/DeepFakeDetection/01_02__walk__ABCD1234", owner) is None
    assert target_real_key("ffpp/c23/LipsSwap/003_002") == "ffpp/c23/real/003"
    assert target_real_key("ffpp/c23/real/003") is None


@pytest.fixture(scope="module")
def pair_cache(make_face_cache, tmp_path_factory):
    """FF++-layout cache of 3 pairs (6 reals, 2 fakes per pair and method), all recorded as
    `train`; reals and fakes have the same length, as FF++ fakes have their target's."""
    videos = []
    for a, b in PAIRS[:3]:
        for vid in (a, b):
            videos.append({"key": f"ffpp/c23/real/{vid}", "label": 0, "dataset": "ffpp",
                           "method": "real", "split": "train", "frames": 6})
        for method in ("FaceSwap", "Deepfakes"):
            for t, s in ((a, b), (b, a)):
                videos.append({"key": f"ffpp/c23/{method}/{t}_{s}", "label": 1,
                               "dataset": "ffpp", "method": method, "split": "train",
                               "frames": 6})
    return make_face_cache(tmp_path_factory.mktemp("pair_cache"), videos, size=32)


def test_splits_dir_reassigns_the_recorded_splits(pair_cache, tmp_path):
    fold = make_folds(PAIRS[:3], 3)[1]
    splits = write_fold_splits(fold, tmp_path / "fold_1")
    spec = SourceSpec("t", str(pair_cache), "ffpp", "test")
    with pytest.raises(Exception, match="split='test'"):
        select_videos(spec)  # recorded: all train
    test_ids = _ids(fold["test"])
    keys = [v.key for v in select_videos(spec, splits)]
    assert len(keys) == 2 + 4 and all(set(k.rsplit("/", 1)[1].split("_")) <= test_ids
                                      for k in keys)
    train = select_videos(SourceSpec("t", str(pair_cache), "ffpp", "train"), splits)
    assert not {i for v in train for i in v.key.rsplit("/", 1)[1].split("_")} & test_ids
    dm = DeepfakeDataModule(train=[SourceSpec("t", str(pair_cache), "ffpp", "train")],
                            test=[spec], splits_dir=str(splits), img_size=32)
    dm.setup("test")
    assert sorted(v.key for v in dm.test_datasets[0].videos) == sorted(keys)


def test_paired_sampler_puts_each_fake_beside_its_target_at_the_same_frame(pair_cache):
    dm = DeepfakeDataModule(train=[SourceSpec("t", str(pair_cache), "ffpp", "train")],
                            mode="clip", clip_len=2, balanced=True, paired=True,
                            samples_per_video=3, img_size=32, augment=False, batch_size=4)
    dm.setup("fit")
    ds, sampler = dm.train_dataset, dm.train_sampler()
    assert isinstance(sampler, BalancedRealFakeSampler) and sampler.paired
    order = np.asarray(list(sampler))
    videos = ds.video_of[order].reshape(-1, 2)
    positions = ds.positions[order].reshape(-1, 2, 2)  # (pairs, member, T)
    for (v0, v1), pos in zip(videos, positions, strict=True):
        (real, r_pos), (fake, f_pos) = sorted([(v0, pos[0]), (v1, pos[1])],
                                              key=lambda x: ds.videos[x[0]].label)
        assert ds.videos[real].label == 0 and ds.videos[fake].label == 1
        assert ds.videos[real].key == target_real_key(ds.videos[fake].key)
        assert (r_pos == f_pos).all()
    with pytest.raises(Exception, match="balanced=True"):
        DeepfakeDataModule(train=[SourceSpec("t", str(pair_cache))], paired=True)


@pytest.mark.parametrize("pair_augment", ["own", "shared"])
def test_shared_pair_augmentation_flips_a_fake_and_its_real_together(pair_cache, pair_augment):
    flip_only = {"flip_p": 0.5, "affine_p": 0.0, "color_p": 0.0, "jpeg_p": 0.0, "noise_p": 0.0,
                 "blur_p": 0.0}

    def module(augment):
        return DeepfakeDataModule(train=[SourceSpec("t", str(pair_cache), "ffpp", "train")],
                                  balanced=True, paired=True, pair_augment=pair_augment,
                                  samples_per_video=3, img_size=32, augment=augment, batch_size=4)

    plain, flipped = module(False), module(flip_only)
    plain.setup("fit")
    flipped.setup("fit")
    order = list(flipped.train_sampler())
    assert [int(i) for i in order] == [int(i) for i in plain.train_sampler()]
    status = []
    for index in order:
        raw, out = plain.train_dataset[index]["image"], flipped.train_dataset[index]["image"]
        mirrored = torch.equal(out, raw.flip(-1))
        assert mirrored or torch.equal(out, raw)  # a flip or nothing, the image not symmetric
        assert not torch.equal(raw, raw.flip(-1))
        status.append(mirrored)
    pairs = np.asarray(status).reshape(-1, 2)  # (pairs, member): True = mirrored
    together = pairs[:, 0] == pairs[:, 1]
    assert pairs.any() and not pairs.all()
    if pair_augment == "shared":
        assert together.all()
    else:
        assert not together.all()  # each sample draws its own flip
    with pytest.raises(Exception, match="paired=True"):
        DeepfakeDataModule(train=[SourceSpec("t", str(pair_cache))], balanced=True,
                           pair_augment="shared")


def _pairwise_auc(pos: list[float], neg: list[float]) -> float:
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    return sum(wins) / len(wins)


def test_weighted_auc_matches_pairwise_counting():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(40), 1)  # many ties
    labels = rng.integers(0, 2, 40)
    weights = rng.integers(0, 3, 40)
    pos = [s for s, y, w in zip(scores, labels, weights, strict=True) if y == 1 for _ in range(w)]
    neg = [s for s, y, w in zip(scores, labels, weights, strict=True) if y == 0 for _ in range(w)]
    assert weighted_auc(scores, labels, weights) == pytest.approx(_pairwise_auc(pos, neg))
    assert math.isnan(weighted_auc([0.1, 0.2], [1, 1]))


def test_non_finite_scores_give_nan_metrics_not_a_result():
    from deepfakemae.metrics import compute_metrics

    with pytest.warns(RuntimeWarning, match="not finite"):
        metrics = compute_metrics([0.2, float("nan"), 0.9, 0.1], [0, 0, 1, 1])
    assert all(math.isnan(v) for v in metrics.values())
    interval = bootstrap_auc([0.2, float("nan")], [0, 1], ["a", "b"], n_boot=10)
    assert math.isnan(interval.value) and interval.format() == "—"


def _fixed_scores() -> ScoredSet:
    # videos r0, r1 real; f0, f1 fake; two frames each
    keys = ["r0", "r0", "r1", "r1", "f0", "f0", "f1", "f1"]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.3, 0.6, 0.8, 0.4, 0.6, 0.9, 0.7])
    return ScoredSet(keys=keys, frames=np.arange(8), labels=labels, scores={"fused": scores})


def test_each_fake_is_set_beside_its_own_real():
    """A branch that scores every fake above its own real but gives one speaker's real videos a
    high offset: all fakes above their real, the offset visible in the real range."""
    key = "ffpp/c23/{}/{}".format
    keys = [key("real", "000"), key("real", "001"), key("FaceSwapWarp@s3", "000_001"),
            key("FaceSwapWarp@s3", "001_000"), key("FaceSwapWarp@s3", "002_003")]  # no real 002
    video = {"F": [0.2, 0.8, 0.3, 0.9, 0.1], "M": [0.5, 0.5, 0.4, 0.6, 0.7]}
    rows = ScoredSet(keys=[k for k in keys for _ in range(2)], frames=np.tile([0, 1], 5),
                     labels=np.repeat([0, 0, 1, 1, 1], 2),
                     scores={b: np.repeat(v, 2) + np.tile([-0.05, 0.05], 5)
                             for b, v in video.items()})
    lines = paired_markdown({"FaceSwapWarp@s3": rows}).splitlines()
    assert lines[2] == "| FaceSwapWarp@s3 | F | 2/2 | +0.10 | 0.20–0.80 |"  # 002_003 unpaired
    assert lines[3] == "| FaceSwapWarp@s3 | M | 1/2 | +0.00 | 0.50–0.50 |"
    assert len(lines) == 4


def test_bootstrap_interval_matches_a_hand_computation():
    s = _fixed_scores()
    # video means: r0 .2, r1 .7, f0 .5, f1 .8 -> pairs (f0>r0, f0<r1, f1>r0, f1>r1) = 3/4
    video = bootstrap_auc(s.scores["fused"], s.labels, s.keys, level="video", n_boot=300, seed=7)
    assert video.value == pytest.approx(0.75)
    # frames: 16 real/fake pairs, 11 wins + 1 tie (0.6 vs 0.6) -> 11.5 / 16
    frame = bootstrap_auc(s.scores["fused"], s.labels, s.keys, level="frame", n_boot=300, seed=7)
    assert frame.value == pytest.approx(11.5 / 16)
    # the same resamples by hand: draw 2 of the 2 reals and 2 of the 2 fakes with replacement
    rng = np.random.default_rng(7)
    means = {"r0": 0.2, "r1": 0.7, "f0": 0.5, "f1": 0.8}
    frames = {k: [x for kk, x in zip(s.keys, s.scores["fused"], strict=True) if kk == k]
              for k in means}
    video_stats, frame_stats = [], []
    for _ in range(300):
        reals = [["r0", "r1"][i] for i in rng.integers(0, 2, 2)]
        fakes = [["f0", "f1"][i] for i in rng.integers(0, 2, 2)]
        video_stats.append(_pairwise_auc([means[f] for f in fakes], [means[r] for r in reals]))
        frame_stats.append(_pairwise_auc([x for f in fakes for x in frames[f]],
                                         [x for r in reals for x in frames[r]]))
    for interval, stats in ((video, video_stats), (frame, frame_stats)):
        low, high = np.quantile(stats, [0.025, 0.975])
        assert (interval.low, interval.high) == pytest.approx((low, high))
        assert interval.low <= interval.value <= interval.high


def test_scores_are_pooled_across_folds(tmp_path):
    s = _fixed_scores()
    half = [ScoredSet(keys=s.keys[i:i + 4], frames=s.frames[i:i + 4], labels=s.labels[i:i + 4],
                      scores={"fused": s.scores["fused"][i:i + 4]}) for i in (0, 4)]
    # fold 0 scored the reals, fold 1 the fakes: only the pooled set has both classes
    files = [write_scores_csv({"Swap": h}, tmp_path / f"fold_{i}.csv") for i, h in enumerate(half)]
    back = read_scores_csv(files[0])["Swap"]
    assert back.keys == s.keys[:4] and np.allclose(back.scores["fused"], s.scores["fused"][:4])
    pooled = pool_scores(files)
    results = set_results(pooled, n_boot=100)
    assert [(r.name, r.num_real, r.num_fake) for r in results] == [("Swap", 2, 2)]
    assert results[0].auc[("fused", "video")].value == pytest.approx(0.75)
    table = results_markdown(results)
    assert "| Swap | 2/2 | 75.0 [" in table
    per_fold = fold_markdown(files)  # each fold holds one class only: no AUC of its own
    assert "| Swap | fused | — | — | — |" in per_fold
    both = [write_scores_csv({"Swap": s}, tmp_path / f"both_{i}.csv") for i in range(2)]
    frame_auc = _pairwise_auc([x for x, y in zip(s.scores["fused"], s.labels, strict=True) if y],
                              [x for x, y in zip(s.scores["fused"], s.labels, strict=True) if not y])
    cell = f"{100 * frame_auc:.1f}"
    assert f"| Swap | fused | {cell} | {cell} | {cell} |" in fold_markdown(both)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a scores file"):
        read_scores_csv(other)


def test_fold_plan_gives_every_stage_its_fold_splits(tmp_path):
    base = load_plan("experiments/demo/plan.yaml", demo=True)
    dirs = [tmp_path / f"fold_{i}" for i in range(3)]
    plan = fold_plan(base, dirs, "demo-cv")
    assert plan.name == "demo-cv" and list(plan.variants) == ["fold_0", "fold_1", "fold_2"]
    for name, stages in plan.variants.items():
        expected = str((tmp_path / name).resolve())
        for spec in stages.values():
            assert spec.args["data"]["init_args"]["splits_dir"] == expected


@pytest.mark.parametrize("source", ["pseudo", "both"])
def test_demo_fake_source_reaches_both_branches_of_every_fold(tmp_path, source):
    """``deepfakemae demo --folds k --fake-source pseudo``: the switch and the fold's splits
    both reach Finetuning and Mapping; stage 1 and the detector are as before; own run folder."""
    from deepfakemae.cli import _tool_parser
    from deepfakemae.commands.demo_plan import demo_plan, run_name
    from deepfakemae.report import rerun_command

    parser = _tool_parser("demo")[0]
    args = parser.parse_args(["--folds", "3", "--fake-source", source, "--max-steps", "2"])
    plan = fold_plan(demo_plan(args), [tmp_path / f"fold_{i}" for i in range(3)],
                     run_name("demo-cv", args.fake_source))
    assert plan.name == f"demo-cv-{source}"
    for name, stages in plan.variants.items():
        for stage, spec in stages.items():
            init = spec.args["data"]["init_args"]
            assert init["splits_dir"] == str((tmp_path / name).resolve())
            assert init.get("fake_source") == (source if stage in ("finetune", "mapping") else None)
            if stage != "detector":
                assert spec.args["trainer"]["max_steps"] == 2
    single = demo_plan(args)
    assert single.name == f"demo-{source}"
    assert rerun_command(single) == f"deepfakemae demo --fake-source {source}"
    swap = parser.parse_args(["--fake-source", source, "--pseudo-methods", "self_blend,blend_swap"])
    swap_plan = demo_plan(swap)
    assert swap_plan.name == f"demo-{source}-self_blend+blend_swap"
    assert rerun_command(swap_plan) == (f"deepfakemae demo --fake-source {source} "
                                        "--pseudo-methods self_blend,blend_swap")
    for stage in ("finetune", "mapping"):
        init = swap_plan.variants["main"][stage].args["data"]["init_args"]
        assert init["pseudo_methods"] == ["self_blend", "blend_swap"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--pseudo-methods", "faceswap"])
    default = demo_plan(parser.parse_args([]))
    assert default.name == "demo" and "data" not in default.variants["main"]["mapping"].args
