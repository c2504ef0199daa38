"""`make demo`'s pipeline (`deepfakemae demo`) end to end at a reduced size, its reuse, and the
cross-validated demo (`deepfakemae demo --folds k`) on the same data."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest

from deepfakemae.cli import main
from deepfakemae.results import read_results


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_finished_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--data-dir", str(tmp_path / "demo"), "--run-root", str(tmp_path / "runs"),
            "--frames", "6", "--max-steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "demo" / "main"
    results = read_results(run / "detector" / "results_test.json").sets
    assert sorted(results) == ["EyesSwap", "EyesSwap@s3", "FaceSwapWarp", "FaceSwapWarp@s3",
                               "LipsSwap", "LipsSwap@s3", "SelfBlend", "SelfBlend@s3"]
    for metrics in results.values():
        for branch in ("fused", "F", "M"):
            assert math.isfinite(metrics[f"{branch}/video_auc"])
            assert math.isfinite(metrics[f"{branch}/frame_auc"])
    assert "| LipsSwap |" in out and "fused video AUC" in out
    assert list(run.glob("pretrain/figures/*.png")) and list(run.glob("detector/figures/*roc*.png"))
    assert list(run.glob("*/wandb/offline-run-*"))
    assert "wandb sync" in out
    assert re.search(r"\| LipsSwap \| 2/2 \| [0-9.]+ \[[0-9.]+, [0-9.]+\]", out)  # AUC [CI]
    assert re.search(r"\| LipsSwap@s3 \| 2/2 \| [0-9.]+ \[[0-9.]+, [0-9.]+\]", out)
    assert "fused video AUC % by artifact strength" in out and "| strength 3 |" in out
    assert f"deepfakemae score --video clip.mp4 --run-dir {run}" in out
    assert re.search(r"\| test \| LipsSwap \| lips \| 2/2 \|", out)  # the premise table
    assert all((run / "premise" / f).is_file() for f in ("premise.md", "premise.csv",
                                                         "premise_videos.csv", "premise.png"))

    # a rerun reuses the dataset, the face cache and every finished stage
    stamp = (run / "pretrain" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("skip demo/main") == 4
    assert "already done 90" in out  # 10 reals, 4 methods x 2 strengths x 10 fakes
    assert (run / "pretrain" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    assert "testing again" not in out

    # results holding other test sets than the plan's (as a run from before strength 3 has):
    # the detector alone runs again
    assert main([*args, "--strengths", "0"]) == 0
    out = capsys.readouterr().out
    assert "hold other test sets than" in out and "testing again" in out
    retested = read_results(run / "detector" / "results_test.json").sets
    assert sorted(retested) == ["EyesSwap", "FaceSwapWarp", "LipsSwap", "SelfBlend"]
    assert (run / "pretrain" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp

    # 3-fold cross-validation on the same data: every speaker pair tested exactly once
    assert main([*args, "--folds", "3", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    cv = tmp_path / "runs" / "demo-cv"
    tested: list[set[str]] = []
    for fold in range(3):
        splits = {s: json.loads((cv / "splits" / f"fold_{fold}" / f"{s}.json").read_text())
                  for s in ("train", "val", "test")}
        ids = {s: {i for pair in pairs for i in pair} for s, pairs in splits.items()}
        assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])
        with open(cv / f"fold_{fold}" / "detector" / "scores_test.csv") as f:
            keys = {row["video_key"] for row in csv.DictReader(f)}
        assert {k.rsplit("/", 1)[1][:3] for k in keys} == ids["test"]  # the fold's test speakers
        tested.append(keys)
    assert not (tested[0] & tested[1]) and not (tested[1] & tested[2])
    reals = {k for keys in tested for k in keys if "/real/" in k}
    assert len(reals) == 10  # every demo speaker's real video was tested once
    with open(cv / "cv_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["test_set"], r["num_real_videos"], r["num_fake_videos"]) for r in rows} == {
        (m, "10", "10") for m in ("EyesSwap", "FaceSwapWarp", "LipsSwap", "SelfBlend")}
    assert all(0 <= float(r["ci_low"]) <= float(r["ci_high"]) <= 1 for r in rows)
    assert "| SelfBlend | 10/10 |" in (cv / "cv_results.md").read_text()
    assert "3-fold identity-disjoint cross-validation" in out
    with open(cv / "premise.csv", encoding="utf-8") as f:  # pooled over folds: every speaker
        premise = list(csv.DictReader(f))
    assert {(r["method"], r["num_real_videos"], r["num_fake_videos"]) for r in premise} == {
        (m, "10", "10") for m in ("EyesSwap", "FaceSwapWarp", "LipsSwap", "SelfBlend")}
    assert "3 identity-disjoint folds pooled" in out


@pytest.mark.slow
def test_reduced_sensitivity_run_pools_every_method_and_strength(tmp_path, monkeypatch, capsys):
    """`deepfakemae demo --folds 3 --sensitivity --strengths 0 3` at the reduced size: data and
    faces prepared alone first, one fold run alone (as parallel fold processes do), then the
    whole command finishes the other folds and pools the curve."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--folds", "3", "--sensitivity", "--strengths", "0", "3",
            "--data-dir", str(tmp_path / "demo"), "--run-root", str(tmp_path / "runs"),
            "--frames", "6", "--max-steps", "2", "--bootstrap", "200"]
    names = ["EyesSwap", "EyesSwap@s3", "FaceSwapWarp", "FaceSwapWarp@s3", "LipsSwap",
             "LipsSwap@s3", "SelfBlend", "SelfBlend@s3"]
    assert main([*args, "--prepare-only"]) == 0
    sources = json.loads((tmp_path / "demo" / "raw" / "demo_sources.json").read_text())
    assert sources["strengths"] == [0, 3] and not (tmp_path / "runs").exists()

    cv = tmp_path / "runs" / "demo-sensitivity-s0+3"
    assert main([*args, "--fold", "0"]) == 0
    assert (cv / "fold_0" / "detector" / "scores_test.csv").is_file()
    assert not (cv / "fold_1").exists() and not (cv / "cv_results.md").exists()
    configs = [p for p in (cv / "fold_0" / "finetune").rglob("config.yaml")
               if "wandb" not in p.parts]  # the config the stage ran with
    assert configs and all("FaceSwapWarp@s3" in p.read_text() for p in configs)  # the mix
    capsys.readouterr()

    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("skip demo-sensitivity-s0+3/fold_0") == 4
    with open(cv / "cv_results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["test_set"], r["num_real_videos"], r["num_fake_videos"]) for r in rows} == {
        (name, "10", "10") for name in names}  # every speaker once per method x strength
    with open(cv / "sensitivity.csv", encoding="utf-8") as f:
        curve = list(csv.DictReader(f))
    assert {(r["method"], r["strength"]) for r in curve} == {
        (m, k) for m in ("EyesSwap", "FaceSwapWarp", "LipsSwap", "SelfBlend") for k in "03"}
    assert {r["branch"] for r in curve} == {"fused", "F", "M"}
    assert (cv / "sensitivity.png").stat().st_size > 0
    # the second draw (each fold's validation speakers) and the two runs' mean: every speaker
    # once per cell, so fold k's validation videos are fold k-1's test videos, key for key
    for draw, levels in (("second_draw", {"video", "frame"}), ("two_run_mean", {"video"})):
        with open(cv / f"sensitivity_{draw}.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert {(r["test_set"], r["num_real_videos"], r["num_fake_videos"]) for r in rows} == {
            (name, "10", "10") for name in names}
        assert {r["level"] for r in rows} == levels
    assert (cv / "sensitivity_two_run_mean.png").stat().st_size > 0
    assert "The mean of the two draws' scores per video" in (cv / "sensitivity.md").read_text()
    assert "val-" not in (cv / "cv_results.csv").read_text()  # the test draw's table only
    assert "sensitivity, 3-fold identity-disjoint cross-validation" in out
    assert "artifact strength 3 (4 fake methods" in out  # the default mix: the strongest
    assert re.search(r"\| FaceSwapWarp@s3 \| fused \| \d+/10 \| [+-][0-9.]+ \| [0-9.]+–[0-9.]+ \|", out)
    assert re.search(r"\| FaceSwapWarp \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \| [0-9.]+ \[", out)
    assert list(cv.glob("wandb/offline-run-*"))
    with open(cv / "premise.csv", encoding="utf-8") as f:  # one row set per method x strength
        premise = list(csv.DictReader(f))
    assert {(r["method"], r["num_real_videos"], r["num_fake_videos"]) for r in premise} == {
        (name, "10", "10") for name in names}
