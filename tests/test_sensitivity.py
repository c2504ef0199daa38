"""Detection against artifact strength: `<Method>@s<k>` test sets pooled over folds and grouped
into curves (table, CSV, plot), and the plans of `deepfakemae demo --sensitivity` and of the
single demo run (strength 3 as extra test sets), built without running them."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from deepfakemae.crossval import (
    pool_scores,
    results_markdown,
    run_mean,
    sensitivity_markdown,
    set_results,
    split_draws,
    strength_groups,
    validation_name,
    write_results_csv,
    write_sensitivity_csv,
    write_sensitivity_plot,
)
from deepfakemae.metrics import ScoredSet
from deepfakemae.results import write_scores_csv
from deepfakemae.synth.demo_data import demo_splits
from deepfakemae.synth.methods import DEMO_METHODS, strength_methods


def _fold_set(fold: int, method: str, separable: bool) -> ScoredSet:
    """Two real and two fake videos of one fold (3 frames each), fused/F/M scores: fakes above
    every real when ``separable``, interleaved otherwise."""
    keys, labels, scores = [], [], []
    fake_scores = (0.8, 0.9) if separable else (0.2, 0.7)
    for i, (label, base) in enumerate([(0, 0.3), (0, 0.6), (1, fake_scores[0]),
                                       (1, fake_scores[1])]):
        kind = "real" if label == 0 else method
        key = f"ffpp/c23/{kind}/{fold}{i}" if label == 0 else f"ffpp/c23/{kind}/{fold}{i}_x"
        for t in range(3):
            keys.append(key)
            labels.append(label)
            scores.append(base + 0.01 * t)
    s = np.array(scores)
    return ScoredSet(keys=keys, frames=np.arange(len(keys)), labels=np.array(labels),
                     scores={"fused": s, "F": s, "M": s[::-1].copy()})


@pytest.fixture
def strength_results(tmp_path):
    """Three folds' scores_test.csv with sets FaceSwapWarp, FaceSwapWarp@s3, LipsSwap and
    LipsSwap@s3: strength 3 perfectly separable, strength 0 not; pooled with intervals."""
    files = []
    for fold in range(3):
        sets = {name: _fold_set(fold, name, separable=name.endswith("@s3"))
                for name in strength_methods(["FaceSwapWarp", "LipsSwap"], [0, 3])}
        files.append(write_scores_csv(sets, tmp_path / f"fold_{fold}.csv"))
    return set_results(pool_scores(files), n_boot=200)


def test_strength_test_sets_pool_over_folds_and_group_by_method(strength_results, tmp_path):
    results = strength_results
    assert [(r.name, r.num_real, r.num_fake) for r in results] == [
        (name, 6, 6) for name in ("FaceSwapWarp", "FaceSwapWarp@s3", "LipsSwap", "LipsSwap@s3")]
    groups = strength_groups(results)
    assert list(groups) == ["FaceSwapWarp", "LipsSwap"]
    assert {m: list(levels) for m, levels in groups.items()} == {"FaceSwapWarp": [0, 3],
                                                                 "LipsSwap": [0, 3]}
    assert groups["LipsSwap"][3].name == "LipsSwap@s3"
    strong = groups["FaceSwapWarp"][3].auc[("fused", "video")]
    weak = groups["FaceSwapWarp"][0].auc[("fused", "video")]
    assert strong.value == pytest.approx(1.0) and strong.low == pytest.approx(1.0)
    # pooled strength 0: fake means .22 and .72 against reals .32 and .62 in every fold
    assert weak.value == pytest.approx(0.5)

    table = sensitivity_markdown(results)
    assert table.splitlines()[0] == ("| method | strength 0 | strength 3 | "
                                     "videos (real/fake) per cell |")
    assert f"| FaceSwapWarp | {weak.format()} | {strong.format()} | 6/6 |" in table
    # the same cells as the full table's
    assert f"| FaceSwapWarp@s3 | 6/6 | {strong.format()} |" in results_markdown(results)

    write_sensitivity_csv(results, tmp_path / "sensitivity.csv")
    with open(tmp_path / "sensitivity.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3 * 2  # method x strength x branch x level
    row = next(r for r in rows if r["test_set"] == "LipsSwap@s3" and r["branch"] == "fused"
               and r["level"] == "video")
    assert (row["method"], row["strength"], row["auc"]) == ("LipsSwap", "3", "1.0000")
    write_results_csv(results, tmp_path / "cv_results.csv")  # the usual table is unchanged
    with open(tmp_path / "cv_results.csv", encoding="utf-8") as f:
        assert {r["test_set"] for r in csv.DictReader(f)} == {r.name for r in results}


def test_sensitivity_plot_is_written_from_pooled_scores(strength_results, tmp_path):
    path = tmp_path / "sensitivity.png"
    image = write_sensitivity_plot(strength_results, path, "test")
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert back.shape == image.shape and np.array_equal(back, image)
    assert image.shape[1] > 2 * image.shape[0]  # one panel per branch: fused, F, M
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # lines and bands, not blank
    only_fused = [type(r)(r.name, r.num_real, r.num_fake,
                          {k: v for k, v in r.auc.items() if k[0] == "fused"})
                  for r in strength_results]
    narrow = write_sensitivity_plot(only_fused, tmp_path / "fused.png")
    assert narrow.shape[1] < image.shape[1]


def test_a_marked_name_that_is_no_demo_strength_is_refused(strength_results):
    bad = type(strength_results[0])("FaceSwapWarp@s7", 1, 1, strength_results[0].auc)
    with pytest.raises(ValueError, match="FaceSwapWarp@s7"):
        strength_groups([*strength_results, bad])


def _scored(keys_scores: dict[str, tuple[int, list[float]]]) -> ScoredSet:
    keys = [k for k, (_, s) in keys_scores.items() for _ in s]
    labels = [lab for _, (lab, s) in keys_scores.items() for _ in s]
    s = np.array([v for _, (_, sc) in keys_scores.items() for v in sc])
    return ScoredSet(keys=keys, frames=np.arange(len(keys)), labels=np.array(labels),
                     scores={"fused": s, "M": 1 - s})


def test_the_second_draw_is_split_off_and_averaged_per_video():
    """A video's two-run score is the mean of its two runs' video means (whatever their frame
    counts), and the ensemble can rank what neither run ranks alone."""
    # run A: real r1 too high; run B: real r2 too high; the mean separates both fakes
    first = _scored({"real/r1": (0, [0.9, 0.9]), "real/r2": (0, [0.1]),
                     "Swap/f1": (1, [0.8, 0.8, 0.8]), "Swap/f2": (1, [0.7])})
    second = _scored({"real/r1": (0, [0.1]), "real/r2": (0, [0.9, 0.9, 0.9]),
                      "Swap/f1": (1, [0.8]), "Swap/f2": (1, [0.95, 0.95])})
    pooled = {"Swap@s3": first, validation_name("Swap@s3"): second}
    test, validation = split_draws(pooled)
    assert test == {"Swap@s3": first} and validation == {"Swap@s3": second}
    mean = run_mean([test, validation])["Swap@s3"]
    (result,) = set_results({"Swap@s3": mean}, n_boot=50, levels=("video",))
    assert set(result.auc) == {("fused", "video"), ("M", "video")}
    assert (result.num_real, result.num_fake) == (2, 2)  # one video each, not two
    for draw in (first, second):  # neither run alone ranks every fake above every real
        (alone,) = set_results({"s": draw}, n_boot=50, levels=("video",))
        assert alone.auc[("fused", "video")].value < 1.0
    assert result.auc[("fused", "video")].value == pytest.approx(1.0)
    video = {k: float(np.mean(mean.scores["fused"][np.asarray(mean.keys) == k]))
             for k in dict.fromkeys(mean.keys)}
    assert video == pytest.approx({"Swap/f1": 0.8, "Swap/f2": 0.825, "real/r1": 0.5,
                                   "real/r2": 0.5})


def test_draws_of_other_videos_are_refused():
    first = _scored({"real/r1": (0, [0.2]), "Swap/f1": (1, [0.8])})
    other = _scored({"real/r9": (0, [0.2]), "Swap/f1": (1, [0.8])})
    with pytest.raises(ValueError, match="'Swap' holds other videos"):
        run_mean([{"Swap": first}, {"Swap": other}])
    relabelled = _scored({"real/r1": (0, [0.2]), "Swap/f1": (0, [0.8])})
    with pytest.raises(ValueError, match=r"other labels \(e\.g\. \['Swap/f1'\]\)"):
        run_mean([{"Swap": first}, {"Swap": relabelled}])


def _member_folds(root, real_scores: dict[int, float]) -> None:
    """One seed's finished 3-fold sensitivity CV under ``root``: fold i tests speaker pair i
    and scores pair i-1 as its validation speakers; every fake 0.8 (2 frames), each real at
    ``real_scores[pair]`` (0.1 if not given), on the sets FaceSwapWarp and FaceSwapWarp@s3."""
    from deepfakemae.rundir import scores_file

    def videos(pair: int) -> dict:
        real = real_scores.get(pair, 0.1)
        return {f"ffpp/c23/real/{pair}": (0, [real, real]),
                f"ffpp/c23/FaceSwapWarp/{pair}_x": (1, [0.8, 0.8])}

    for fold in range(3):
        sets = {}
        for name in ("FaceSwapWarp", "FaceSwapWarp@s3"):
            sets[name] = _scored(videos(fold))
            sets[validation_name(name)] = _scored(videos((fold - 1) % 3))
        path = scores_file(root / f"fold_{fold}" / "detector")
        path.parent.mkdir(parents=True)
        write_scores_csv(sets, path)


def test_a_seed_ensemble_scores_each_video_by_the_mean_of_its_seeds_runs(tmp_path, monkeypatch):
    """``--folds k --seed 0 1``: each seed's CV folder pooled into ``<cv>-seed0+1``; a video's
    score is the mean of its two seeds' video means, so the ensemble ranks what neither seed
    ranks alone (seed 0 scores pair 0's real above every fake, seed 1 pair 1's)."""
    from deepfakemae.commands.demo import check_demo_arguments, seed_ensemble
    from deepfakemae.commands.demo_plan import cv_name, demo_command, member_args

    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = _demo_args(tmp_path, "--folds", "3", "--sensitivity", "--seed", "1", "0",
                      "--bootstrap", "100")
    assert check_demo_arguments(args) is None
    assert cv_name(args) == "demo-sensitivity-seed0+1"
    assert demo_command(args, folds=True) == "deepfakemae demo --folds 3 --sensitivity --seed 0 1"
    members = [tmp_path / "runs" / cv_name(member_args(args, s)) for s in (0, 1)]
    assert [m.name for m in members] == ["demo-sensitivity", "demo-sensitivity-seed1"]
    _member_folds(members[0], {0: 0.9})
    _member_folds(members[1], {1: 0.9})
    root = seed_ensemble(args, members)
    assert root == tmp_path / "runs" / "demo-sensitivity-seed0+1"

    def fused(path):
        with open(path, encoding="utf-8") as f:
            return {(r["test_set"], r["level"]): (float(r["auc"]), r["num_real_videos"],
                                                  r["num_fake_videos"])
                    for r in csv.DictReader(f) if r["branch"] == "fused"}

    # alone, each seed puts one real (0.9) above all three fakes (0.8): AUC 6/9
    alone = set_results(split_draws(pool_scores(
        [members[0] / f"fold_{i}" / "detector" / "scores_test.csv" for i in range(3)]))[0],
        n_boot=20, levels=("video",))
    assert alone[1].auc[("fused", "video")].value == pytest.approx(6 / 9)
    # the ensemble: reals 0.5, 0.5, 0.1 against fakes 0.8
    assert fused(root / "sensitivity.csv") == {("FaceSwapWarp", "video"): (1.0, "3", "3"),
                                               ("FaceSwapWarp@s3", "video"): (1.0, "3", "3")}
    assert fused(root / "cv_results.csv")[("FaceSwapWarp@s3", "video")][0] == 1.0
    # the ensemble's second draw (validation speakers) and the mean of both draws
    assert fused(root / "sensitivity_second_draw.csv")[("FaceSwapWarp@s3", "video")][0] == 1.0
    assert set(fused(root / "sensitivity_two_run_mean.csv")) == {("FaceSwapWarp", "video"),
                                                               ("FaceSwapWarp@s3", "video")}
    text = (root / "sensitivity.md").read_text()
    assert "ensemble of seeds 0, 1" in text and str(members[1]) in text
    assert (root / "sensitivity.png").stat().st_size > 0
    # the seeds must score the same videos
    _member_folds(tmp_path / "short", {})
    with pytest.raises(ValueError, match="holds other videos"):
        seed_ensemble(args, [members[0], _drop_fold_videos(tmp_path / "short")])


def _drop_fold_videos(root):
    """``root``'s CV with fold 2's scores replaced by fold 1's: its pooled sets lack pair 2's
    videos."""
    (root / "fold_2" / "detector" / "scores_test.csv").write_text(
        (root / "fold_1" / "detector" / "scores_test.csv").read_text())
    return root


def test_ensemble_seeds_are_refused_outside_a_cross_validation(tmp_path):
    from deepfakemae.commands.demo import check_demo_arguments

    assert "add --folds 5" in check_demo_arguments(_demo_args(tmp_path, "--seed", "0", "1"))
    assert "each seed once" in check_demo_arguments(
        _demo_args(tmp_path, "--folds", "5", "--seed", "1", "1"))
    assert check_demo_arguments(_demo_args(tmp_path, "--seed", "2")) is None


# ------------------------------------------------------------------------------------- plans
def _demo_args(tmp_path, *flags):
    from deepfakemae.cli import _tool_parser

    raw = tmp_path / "data" / "raw" / "splits"
    raw.mkdir(parents=True, exist_ok=True)
    for split, pairs in demo_splits([f"{i:03d}" for i in range(10)]).items():
        (raw / f"{split}.json").write_text(json.dumps(pairs))
    return _tool_parser("demo")[0].parse_args(
        ["--data-dir", str(tmp_path / "data"), "--run-root", str(tmp_path / "runs"), *flags])


def _init(spec) -> dict:
    return spec.args.get("data", {}).get("init_args", {})


def test_sensitivity_plan_trains_on_the_strongest_level_and_tests_each(tmp_path):
    from deepfakemae.commands.demo_plan import cv_setup, detector_test_names

    args = _demo_args(tmp_path, "--folds", "5", "--sensitivity")
    root, splits_dirs, plan = cv_setup(args)
    assert root == tmp_path / "runs" / "demo-sensitivity" and plan.name == "demo-sensitivity"
    assert list(plan.variants) == [f"fold_{i}" for i in range(5)]
    every = strength_methods(DEMO_METHODS, [0, 1, 2, 3])
    assert len(every) == 16 and every[:4] == ["FaceSwapWarp", "FaceSwapWarp@s1",
                                               "FaceSwapWarp@s2", "FaceSwapWarp@s3"]
    cache = str((tmp_path / "data" / "cache").resolve())
    tested = []
    for i, (variant, stages) in enumerate(plan.variants.items()):
        splits = {s: json.loads((splits_dirs[i] / f"{s}.json").read_text())
                  for s in ("train", "val", "test")}
        ids = {s: {v for p in pairs for v in p} for s, pairs in splits.items()}
        assert not ids["train"] & (ids["val"] | ids["test"]) and not ids["val"] & ids["test"]
        tested += splits["test"]
        for spec in stages.values():
            assert _init(spec)["splits_dir"] == str(splits_dirs[i].resolve())
        for branch in ("finetune", "mapping"):
            (train,) = _init(stages[branch])["train"]
            assert train == {"name": "demo", "cache": cache, "dataset": "ffpp", "split": "train",
                             "methods": ["real", "FaceSwapWarp@s3", "LipsSwap@s3", "EyesSwap@s3",
                                         "SelfBlend@s3"]}
            assert "val" not in _init(stages[branch])  # validation: the overlays' strength 0
        assert "train" not in _init(stages["pretrain"])  # stage 1: real faces only, as before
        assert stages["finetune"].args["trainer"] == {"max_steps": 960,  # SENSITIVITY_STEPS
                                                      "check_val_every_n_epoch": 40}
        assert stages["mapping"].args["trainer"] == {"max_steps": 600,
                                                     "check_val_every_n_epoch": 40}
        assert "trainer" not in stages["pretrain"].args
        # every set on the test speakers, then again on the validation speakers (second draw)
        assert detector_test_names(plan, variant) == every + [f"val-{n}" for n in every]
        assert _init(stages["detector"])["test"][5] == {
            "name": "LipsSwap@s1", "cache": cache, "dataset": "ffpp", "split": "test",
            "methods": ["real", "LipsSwap@s1"]}
        assert _init(stages["detector"])["test"][16 + 5] == {
            "name": "val-LipsSwap@s1", "cache": cache, "dataset": "ffpp", "split": "val",
            "methods": ["real", "LipsSwap@s1"]}
    assert sorted(map(tuple, tested)) == sorted(tuple(p) for p in
                                                [[f"{2 * i:03d}", f"{2 * i + 1:03d}"]
                                                 for i in range(5)])


def test_another_training_mix_gets_a_folder_of_its_own(tmp_path):
    from deepfakemae.commands.demo_plan import cv_setup, detector_test_names

    args = _demo_args(tmp_path, "--folds", "5", "--sensitivity", "--train-strengths", "3", "0",
                      "1", "2")
    _, _, plan = cv_setup(args)
    assert plan.name == "demo-sensitivity-t0+1+2+3"
    every = strength_methods(DEMO_METHODS, [0, 1, 2, 3])
    for branch in ("finetune", "mapping"):
        assert _init(plan.variants["fold_1"][branch])["train"][0]["methods"] == ["real", *every]
    # the same test sets whatever the mix
    assert detector_test_names(plan, "fold_1") == every + [f"val-{n}" for n in every]
    same = cv_setup(_demo_args(tmp_path, "--folds", "5", "--sensitivity",
                               "--train-strengths", "3"))[2]
    assert same.name == "demo-sensitivity"  # the default spelled out: the default's folder
    reduced = cv_setup(_demo_args(tmp_path, "--folds", "3", "--sensitivity", "--strengths", "2",
                                  "--train-strengths", "0", "2"))[2]
    assert reduced.name == "demo-sensitivity-s0+2-t0+2"


def test_reduced_and_scaled_sensitivity_runs_get_folders_of_their_own(tmp_path):
    from deepfakemae.commands.demo_plan import cv_setup, detector_test_names

    args = _demo_args(tmp_path, "--folds", "3", "--sensitivity", "--strengths", "3")
    root, _, plan = cv_setup(args)
    assert plan.name == "demo-sensitivity-s0+3"  # 0 always included
    stages = plan.variants["fold_0"]
    assert _init(stages["mapping"])["train"][0]["methods"] == [
        "real", *strength_methods(DEMO_METHODS, [3])]  # the strongest tested level
    tested = strength_methods(DEMO_METHODS, [0, 3])
    assert detector_test_names(plan, "fold_0") == tested + [f"val-{n}" for n in tested]

    scaled = cv_setup(_demo_args(tmp_path, "--folds", "5", "--sensitivity",
                                 "--step-scale", "10"))[2]
    assert scaled.name == "demo-sensitivity-x10"
    budgets = {s: scaled.variants["fold_2"][s].args["trainer"] for s in
               ("pretrain", "finetune", "mapping")}
    assert budgets == {"pretrain": {"max_steps": 4000, "check_val_every_n_epoch": 100},
                       "finetune": {"max_steps": 9600, "check_val_every_n_epoch": 400},  # x2
                       "mapping": {"max_steps": 6000, "check_val_every_n_epoch": 400}}  # x4
    assert "trainer" not in scaled.variants["fold_2"]["detector"].args


def test_single_demo_adds_strength_3_test_sets_and_the_cv_keeps_strength_0(tmp_path):
    from deepfakemae.commands.demo_plan import cv_setup, demo_plan, detector_test_names

    single = demo_plan(_demo_args(tmp_path))
    assert single.name == "demo"
    assert detector_test_names(single, "main") == [
        "FaceSwapWarp", "FaceSwapWarp@s3", "LipsSwap", "LipsSwap@s3", "EyesSwap",
        "EyesSwap@s3", "SelfBlend", "SelfBlend@s3"]
    for branch in ("finetune", "mapping"):  # training as before: the overlays' strength 0
        assert "data" not in single.variants["main"][branch].args
    plain = demo_plan(_demo_args(tmp_path, "--strengths", "0"))
    assert "data" not in plain.variants["main"]["detector"].args
    assert detector_test_names(plain, "main") == list(DEMO_METHODS)  # from the overlay
    cv = cv_setup(_demo_args(tmp_path, "--folds", "5"))[2]
    assert cv.name == "demo-cv" and detector_test_names(cv, "fold_0") == list(DEMO_METHODS)
    assert all("train" not in _init(spec) for spec in cv.variants["fold_0"].values())


def test_the_demo_passes_its_cache_to_the_stages_not_through_os_environ(tmp_path, monkeypatch):
    import os

    from deepfakemae.commands.demo_plan import cv_setup, demo_plan
    from deepfakemae.plans import plan_jobs

    monkeypatch.delenv("DEMO_CACHE", raising=False)
    cache = str((tmp_path / "data" / "cache").resolve())
    single = demo_plan(_demo_args(tmp_path))
    cv = cv_setup(_demo_args(tmp_path, "--folds", "5"))[2]
    for plan in (single, cv):
        assert plan.env == {"DEMO_CACHE": cache}
        jobs = plan_jobs(plan, tmp_path / "runs")
        assert jobs and all(job.env()["DEMO_CACHE"] == cache for job in jobs)
        assert f"DEMO_CACHE={cache}" in jobs[0].shell()
    assert "DEMO_CACHE" not in os.environ
    monkeypatch.setenv("DEMO_CACHE", "/elsewhere")  # the command's own value wins
    assert plan_jobs(single, tmp_path / "runs")[0].env()["DEMO_CACHE"] == cache


def test_another_seed_is_another_training_run_of_every_stage_in_a_folder_of_its_own(tmp_path):
    from deepfakemae.commands.demo_plan import cv_setup, demo_plan
    from deepfakemae.plans import flag_list

    _, base_dirs, base = cv_setup(_demo_args(tmp_path, "--folds", "5", "--sensitivity"))
    _, dirs, plan = cv_setup(_demo_args(tmp_path, "--folds", "5", "--sensitivity", "--seed", "3"))
    assert plan.name == "demo-sensitivity-seed3" and base.name == "demo-sensitivity"
    for a, b in zip(base_dirs, dirs, strict=True):  # the same folds, in a folder of its own
        assert a != b and all((a / f).read_text() == (b / f).read_text()
                              for f in ("train.json", "val.json", "test.json"))
    unfolded = ("seed", "splits_dir")
    for variant, stages in plan.variants.items():
        for stage, spec in stages.items():
            assert spec.args["seed_everything"] == 3
            assert _init(spec).get("seed") == (None if stage == "detector" else 3)
            assert spec.args.get("model", {}).get("init_args", {}).get("seed") == (
                3 if stage == "mapping" else None)  # the Mapping Network's meta split
            # nothing else moves: the same folds, training mix, budgets and test sets
            before = base.variants[variant][stage]
            strip = {k: v for k, v in spec.args.items() if k not in ("seed_everything", "model")}
            strip["data"] = {"init_args": {k: v for k, v in _init(spec).items()
                                           if k not in unfolded}}
            kept = {k: v for k, v in before.args.items() if k != "model"}
            kept["data"] = {"init_args": {k: v for k, v in _init(before).items()
                                          if k not in unfolded}}
            assert strip == kept
            assert "--seed_everything=3" in flag_list(spec.args)
    assert "seed_everything" not in base.variants["fold_0"]["mapping"].args
    assert demo_plan(_demo_args(tmp_path, "--seed", "1")).name == "demo-seed1"
    with pytest.raises(SystemExit):
        _demo_args(tmp_path, "--seed", "-1")


def test_each_demo_plan_records_the_command_that_reruns_it(tmp_path):
    import dataclasses

    from deepfakemae.commands.demo_plan import cv_setup, demo_plan
    from deepfakemae.plans import RERUN_KEY
    from deepfakemae.report import rerun_command

    cases = {(): "deepfakemae demo",
             ("--folds", "5"): "deepfakemae demo --folds 5",
             ("--folds", "3", "--fake-source", "pseudo", "--pseudo-methods", "blend_swap"):
                 "deepfakemae demo --folds 3 --fake-source pseudo --pseudo-methods blend_swap",
             ("--folds", "5", "--sensitivity"): "deepfakemae demo --folds 5 --sensitivity",
             ("--folds", "3", "--sensitivity", "--strengths", "3", "--step-scale", "10"):
                 "deepfakemae demo --folds 3 --sensitivity --strengths 0 3 --step-scale 10",
             ("--folds", "5", "--sensitivity", "--train-strengths", "3", "2"):
                 "deepfakemae demo --folds 5 --sensitivity --train-strengths 2 3",
             ("--fake-source", "both", "--step-scale", "2"):
                 "deepfakemae demo --fake-source both --step-scale 2",
             ("--folds", "5", "--sensitivity", "--seed", "1", "--step-scale", "10"):
                 "deepfakemae demo --folds 5 --sensitivity --seed 1 --step-scale 10",
             ("--fake-source", "pseudo", "--seed", "2"):
                 "deepfakemae demo --fake-source pseudo --seed 2"}
    for flags, command in cases.items():
        args = _demo_args(tmp_path, *flags)
        plan = cv_setup(args)[2] if args.folds else demo_plan(args)
        assert rerun_command(plan) == command, flags
        # a plan.json from before the command was recorded: read from the folder's name
        old = dataclasses.replace(plan, resolved={k: v for k, v in plan.resolved.items()
                                                  if k != RERUN_KEY})
        assert rerun_command(old) == command, plan.name


def test_detector_results_with_other_test_sets_are_tested_again(tmp_path):
    from deepfakemae.commands.demo_plan import demo_plan, stale_tests

    args = _demo_args(tmp_path)
    plan = demo_plan(args)
    results = tmp_path / "runs" / "demo" / "main" / "detector" / "results_test.json"
    assert stale_tests(plan, args.run_root) == []  # nothing run yet
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({m: {"fused/auc": 0.5} for m in DEMO_METHODS}))  # an older run
    assert stale_tests(plan, args.run_root) == ["main"]
    results.write_text(json.dumps({m: {"fused/auc": 0.5}
                                   for m in strength_methods(DEMO_METHODS, [0, 3])}))
    assert stale_tests(plan, args.run_root) == []
    results.write_text('{"EyesSwap": ')  # cut short: tested again rather than trusted
    assert stale_tests(plan, args.run_root) == ["main"]


@pytest.mark.parametrize("flags, message", [
    (["--sensitivity"], "add --folds 5"),
    (["--folds", "3", "--sensitivity", "--fake-source", "pseudo"], "drop --fake-source"),
    (["--step-scale", "10", "--max-steps", "2"], "not both"),
    (["--train-strengths", "3"], "add --folds 5 --sensitivity"),
    (["--folds", "3", "--sensitivity", "--strengths", "3", "--train-strengths", "2"],
     "add it to --strengths"),
    (["--folds", "3", "--fold", "3"], "0 <= fold < k"),
    (["--fold", "0"], "--fold needs --folds"),
])
def test_option_combinations_that_cannot_run_are_refused_before_any_work(
        tmp_path, capsys, flags, message):
    from deepfakemae.cli import main

    data = tmp_path / "data"
    assert main(["demo", "--data-dir", str(data), "--run-root", str(tmp_path / "runs"),
                 *flags]) == 2
    assert message in capsys.readouterr().err
    assert not data.exists()  # refused before building anything
