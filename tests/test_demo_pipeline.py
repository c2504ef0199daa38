"""`make demo`'s pipeline (`deepfakemae demo`) end to end at a reduced size, and its reuse."""

from __future__ import annotations

import json
import math

import pytest

from deepfakemae.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_finished_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--data-dir", str(tmp_path / "demo"), "--run-root", str(tmp_path / "runs"),
            "--frames", "6", "--max-steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "demo" / "main"
    results = json.loads((run / "detector" / "results_test.json").read_text())
    assert sorted(results) == ["EyesSwap", "FaceSwapWarp", "LipsSwap", "SelfBlend"]
    for metrics in results.values():
        for branch in ("fused", "F", "M"):
            assert math.isfinite(metrics[f"{branch}/video_auc"])
            assert math.isfinite(metrics[f"{branch}/frame_auc"])
    assert "| LipsSwap |" in out and "fused video AUC" in out
    assert list(run.glob("pretrain/figures/*.png")) and list(run.glob("detector/figures/*roc*.png"))
    assert list(run.glob("*/wandb/offline-run-*"))
    assert "wandb sync" in out

    # a rerun reuses the dataset, the face cache and every finished stage
    stamp = (run / "pretrain" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("skip demo/main") == 4
    assert "already done 50" in out
    assert (run / "pretrain" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
