"""``deepfakemae predict --video``: scores, failure reporting, output files and --explain figures,
with tiny stage-1/stage-2 checkpoints trained through the CLI (``trained`` of test_stage2)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_stage2 import trained  # noqa: F401  (module fixture: micro stage 1 + both branches)

from deepfakemae.cli import main
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.scoring import VideoScorer

GRID = Path(__file__).resolve().parents[1] / "deepfakemae" / "assets" / "grid"  # bundled clips
FRAMES = "6"


def _ckpt(root: Path, stage: str) -> Path:
    return root / "runs" / stage / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):  # noqa: F811
    """``predict --explain`` over a folder holding one GRID clip and one corrupt "video"."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "bbaf2n.mpg").symlink_to(GRID / "bbaf2n.mpg")
    (folder / "broken.mp4").write_text("this is not a video\n")
    out = tmp_path_factory.mktemp("predictions")
    rc = main(["predict", "--video", str(folder), "--output", str(out), "--frames", FRAMES,
               "--device", "cpu", "--explain"])
    by_key = {p["key"]: p for p in json.loads((out / "predictions.json").read_text())}
    return rc, out, by_key


@pytest.mark.slow
def test_scores_good_video_and_reports_unreadable(predicted):
    rc, out, by_key = predicted
    assert rc == 1  # one input could not be scored
    assert set(by_key) == {"bbaf2n", "broken"}
    good = by_key["bbaf2n"]
    assert good["status"] == "ok" and good["error"] == ""
    assert 0.0 <= good["fake_probability"] <= 1.0
    assert good["label"] == ("fake" if good["fake_probability"] >= 0.5 else "real")
    frames = good["frames"]
    assert 1 <= len(frames) == good["num_faces"] <= int(FRAMES)
    for f in frames:
        x0, y0, x1, y1 = f["box"]
        assert 0 <= x0 < x1 <= 360 and 0 <= y0 < y1 <= 288  # GRID frames are 360x288
        assert f["fused"] == pytest.approx((f["F"] + f["M"]) / 2)
    assert [f["frame_index"] for f in frames] == sorted(f["frame_index"] for f in frames)
    for branch in ("F", "M"):
        assert good["branches"][branch] == pytest.approx(np.mean([f[branch] for f in frames]))
    assert good["fake_probability"] == pytest.approx(
        (good["branches"]["F"] + good["branches"]["M"]) / 2)

    bad = by_key["broken"]
    assert bad["status"] == "unreadable" and "broken.mp4" in bad["error"]
    assert bad["fake_probability"] is None and bad["branches"] == {"F": None, "M": None}
    assert bad["frames"] == [] and bad["label"] is None

    with (out / "predictions.csv").open() as handle:
        rows = {r["key"]: r for r in csv.DictReader(handle)}
    assert float(rows["bbaf2n"]["fake_probability"]) == pytest.approx(good["fake_probability"],
                                                                      abs=1e-6)
    assert int(rows["bbaf2n"]["num_faces"]) == len(frames)
    assert rows["broken"]["status"] == "unreadable" and rows["broken"]["fake_probability"] == ""


@pytest.mark.slow
def test_explain_writes_readable_figures(predicted):
    _, out, by_key = predicted
    folder = out / "explain" / "bbaf2n"
    assert sorted(p.name for p in folder.iterdir()) == ["cam.png", "reconstruction.png"]
    assert by_key["bbaf2n"]["explain"] == {"cam": str(folder / "cam.png"),
                                           "reconstruction": str(folder / "reconstruction.png")}
    assert not (out / "explain" / "broken").exists()
    recon = cv2.imread(str(folder / "reconstruction.png"))
    cam = cv2.imread(str(folder / "cam.png"))
    # 64 px faces drawn at 192 px: 3 part rows (+ header) x 4 panels (+ label column)
    assert recon.shape[0] >= 3 * 192 and recon.shape[1] >= 4 * 192
    assert cam.shape[0] >= 192 and cam.shape[1] >= 4 * 192
    for image in (recon, cam):
        assert float(image.std()) > 20  # real content, not a blank canvas
    # the three reconstruction rows differ (a different part is masked in each)
    body = recon[recon.shape[0] - 3 * 192:, recon.shape[1] - 4 * 192:]
    rows = body.reshape(3, 192, -1, 3).astype(np.float32)
    assert np.abs(rows[0] - rows[1]).mean() > 1 and np.abs(rows[1] - rows[2]).mean() > 1


def test_window_scores_average_overlapping_clips(trained):  # noqa: F811
    detector = DualNetworkDetector(str(_ckpt(trained, "finetune")), str(_ckpt(trained, "mapping")))
    scorer = VideoScorer(detector, torch.device("cpu"), batch_size=1)
    crops = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    scores = scorer.score_faces(crops)  # windows 0-4 and 2-6
    from deepfakemae.faces.tensors import to_tensor

    images = to_tensor(crops)
    with torch.no_grad():
        first = detector.branch_scores(images[None, 0:5])
        second = detector.branch_scores(images[None, 2:7])
    f1, f2 = float(first["F"][0, 0]), float(second["F"][0, 0])
    assert scores["F"][0] == pytest.approx(f1, abs=1e-6)
    assert scores["F"][3] == pytest.approx((f1 + f2) / 2, abs=1e-6)
    assert scores["F"][6] == pytest.approx(f2, abs=1e-6)
    m_alone = detector.mapping.fake_probability(images).detach().numpy()
    np.testing.assert_allclose(scores["M"], m_alone, atol=1e-6)  # M is per frame
    short = scorer.score_faces(crops[:2])  # fewer faces than a clip: padded with the last face
    assert short["F"].shape == (2,) and all(math.isfinite(v) for v in short["fused"])


def test_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "finetune.ckpt"
    rc = main(["predict", "--video", str(GRID / "bbaf2n.mpg"), "--finetune-ckpt", str(missing),
               "--mapping-ckpt", str(tmp_path / "mapping.ckpt"), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "make train-stage2" in err
    assert not (tmp_path / "o").exists()


def test_explain_without_stage1_still_scores(trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o"
    rc = main(["predict", "--input", str(GRID / "lbax4n.mpg"), "--output", str(out),
               "--frames", "3", "--device", "cpu", "--explain",
               "--mae-ckpt", str(tmp_path / "no_stage1.ckpt")])
    assert rc == 0
    captured = capsys.readouterr()
    assert "no_stage1.ckpt" in captured.err and "skipping reconstruction.png" in captured.err
    assert "lbax4n" in captured.out  # the printed table
    (prediction,) = json.loads((out / "predictions.json").read_text())
    assert prediction["status"] == "ok" and 0 <= prediction["fake_probability"] <= 1
    assert sorted(p.name for p in (out / "explain" / "lbax4n").iterdir()) == ["cam.png"]


def test_score_finds_the_demo_models_from_run_dir(trained, tmp_path, monkeypatch, capsys):  # noqa: F811
    demo = tmp_path / "runs" / "demo" / "main"  # where `make demo` leaves its models
    demo.parent.mkdir(parents=True)
    demo.symlink_to(trained / "runs")
    monkeypatch.delenv("RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    clip = str(GRID / "lbax4n.mpg")
    assert main(["score", "--video", clip, "--output", "o", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"deepfakemae score --video {clip} --run-dir runs/demo/main" in err
    rc = main(["score", "--video", clip, "--run-dir", "runs/demo/main", "--output", "o",
               "--frames", "3", "--device", "cpu", "--no-progress"])
    assert rc == 0 and "lbax4n" in capsys.readouterr().out
    (prediction,) = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert prediction["status"] == "ok"


def test_predict_is_score_and_its_help_is_short(capsys):
    for command in ("score", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "--video" in out and "--run-dir" in out and len(out.splitlines()) < 80
    assert main(["--help"]) == 0
    assert "score --video" in capsys.readouterr().out
    # LightningCLI's predict wrote nothing: a config is now a usage error naming --video
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", "experiments/detector.yaml"])
    assert exit_info.value.code == 2 and "--video" in capsys.readouterr().err
