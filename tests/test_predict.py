"""``deepfakemae score --video`` (``predict``, its old spelling, in
:func:`test_predict_is_score_and_its_help_is_short`): scores, failure reporting, output files and
--explain figures, with tiny stage-1/stage-2 checkpoints trained through the CLI (``trained`` of
test_stage2)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_stage2 import trained  # noqa: F401  (module fixture: micro stage 1 + both branches)

from deepfakemae.cli import main
from deepfakemae.modules.detector import DualNetworkDetector
from deepfakemae.scoring import STILL_NOTE, VideoScorer

GRID = Path(__file__).resolve().parents[1] / "deepfakemae" / "assets" / "grid"  # bundled clips
FRAMES = "6"


def _ckpt(root: Path, stage: str) -> Path:
    return root / "runs" / stage / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory):  # noqa: F811
    """``score --explain`` over a folder holding one GRID clip and one corrupt "video"."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "bbaf2n.mpg").symlink_to(GRID / "bbaf2n.mpg")
    (folder / "broken.mp4").write_text("this is not a video\n")
    out = tmp_path_factory.mktemp("predictions")
    rc = main(["score", "--video", str(folder), "--output", str(out), "--frames", FRAMES,
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
    rc = main(["score", "--video", str(GRID / "bbaf2n.mpg"), "--finetune-ckpt", str(missing),
               "--mapping-ckpt", str(tmp_path / "mapping.ckpt"), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "make train-stage2" in err
    assert not (tmp_path / "o").exists()


def test_explain_without_stage1_still_scores(trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "o"
    rc = main(["score", "--input", str(GRID / "lbax4n.mpg"), "--output", str(out),
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


def _usage_error(capsys, argv: list[str]) -> str:
    """Run ``argv``; assert a usage error (exit 2) of one line on stderr and return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deepfakemae score: error: "), err
    return err


def test_output_is_checked_before_anything_is_scored(tmp_path, capsys):
    clip = str(GRID / "lbax4n.mpg")
    taken = tmp_path / "taken.txt"
    taken.write_text("a file\n")
    runs = ["--run-dir", str(tmp_path / "no_runs")]  # nothing to score with: output comes first
    err = _usage_error(capsys, ["score", "--video", clip, "--output", str(taken), *runs])
    assert f"--output {taken} is a file" in err
    err = _usage_error(capsys, ["score", "--video", clip, "--output", str(taken / "sub"), *runs])
    assert f"{taken} is a file, not a folder" in err
    assert taken.read_text() == "a file\n"
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "read_only"
        locked.mkdir(mode=0o555)
        err = _usage_error(capsys, ["score", "--video", clip, "--output", str(locked), *runs])
        assert "is not writable" in err


def test_bad_arguments_are_one_line_usage_errors(tmp_path, capsys):
    clip = str(GRID / "lbax4n.mpg")
    base = ["score", "--video", clip, "--output", str(tmp_path / "o"),
            "--run-dir", str(tmp_path / "no_runs")]
    assert "--device gpu: not a torch device" in _usage_error(capsys, [*base, "--device", "gpu"])
    for spec in ("F=x.ckpt", "finetune=x.ckpt", "fused=x.ckpt", "X", "=x.ckpt", "X="):
        err = _usage_error(capsys, [*base, "--device", "cpu", "--branch", spec])
        assert f"--branch {spec!r}" in err
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    err = _usage_error(capsys, ["score", "--video", str(fifo), "--output", str(tmp_path / "o"),
                                "--device", "cpu"])
    assert "is a named pipe (FIFO)" in err
    assert not (tmp_path / "o").exists()


def _copies(folder: Path, n: int) -> Path:
    """``n`` GRID clips (the bundled three, under several names) in ``folder``."""
    folder.mkdir()
    clips = sorted(GRID.glob("*.mpg"))
    for i in range(n):
        (folder / f"clip{i}.mpg").symlink_to(clips[i % len(clips)])
    return folder


def _score_argv(trained: Path, video: Path, out: Path, *more: str) -> list[str]:  # noqa: F811
    return ["score", "--video", str(video), "--run-dir", str(trained / "runs"), "--output",
            str(out), "--frames", "2", "--device", "cpu", "--no-progress", *more]


REPO = Path(__file__).resolve().parents[1]


def _report_keys(page: Path) -> list[str]:
    """The keys of the videos a ``--report`` page shows (see tests/test_score_report.py)."""
    return re.findall(r'<article class="video" id="video-\d+" data-key="([^"]*)"',
                      page.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_ctrl_c_keeps_scored_videos_and_a_rerun_skips_them(trained, tmp_path, capsys):  # noqa: F811
    videos, out, page = _copies(tmp_path / "videos", 8), tmp_path / "out", tmp_path / "r.html"
    argv = _score_argv(trained, videos, out)
    argv[1:1] = ["--report", str(page)]  # a page of what was finished, also after Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "deepfakemae.cli", *argv],
                            env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, json_path = time.monotonic() + 300, out / "predictions.json"

    def scored() -> int:  # videos in predictions.json now (replaced atomically: always JSON)
        return len(json.loads(json_path.read_text(encoding="utf-8"))) if json_path.exists() else 0

    while scored() == 0 and proc.poll() is None:
        assert time.monotonic() < deadline, "no video in predictions.json after 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the other videos are being scored
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command" in err
    kept = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    with (out / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert 1 <= len(kept) < 8 and [r["key"] for r in rows] == [p["key"] for p in kept]
    assert all(p["status"] == "ok" for p in kept)
    assert _report_keys(page) == [p["key"] for p in kept] and str(page) in err

    assert main(argv) == 0  # the rerun scores only the rest
    assert f"{len(kept)} of 8 videos already scored" in capsys.readouterr().err
    done = {p["key"]: p for p in json.loads((out / "predictions.json").read_text())}
    assert sorted(done) == [f"clip{i}" for i in range(8)]
    assert all(done[p["key"]] == p for p in kept)  # kept as they were, not scored again
    assert sorted(_report_keys(page)) == sorted(done)  # the page covers the whole folder

    assert main(argv + ["--threshold", "0.0"]) == 0  # a new threshold relabels, no rescoring
    relabelled = json.loads((out / "predictions.json").read_text())
    assert {p["label"] for p in relabelled} == {"fake"}
    assert "8 of 8 videos already scored" in capsys.readouterr().err

    err = _usage_error(capsys, argv[:-3] + ["--frames", "3", "--device", "cpu"])
    assert "other settings: frames 2 (earlier) vs 3 (now)" in err and "--rescore" in err
    assert main(argv[:-3] + ["--frames", "3", "--device", "cpu", "--rescore"]) == 0
    assert "already scored" not in capsys.readouterr().err
    rescored = json.loads((out / "predictions.json").read_text())
    assert len(rescored) == 8 and all(len(p["frames"]) == 3 for p in rescored)


@pytest.mark.slow
def test_scoring_a_folder_twice_in_place_never_scores_its_own_outputs(
        trained, tmp_path, monkeypatch, capsys):  # noqa: F811
    videos = _copies(tmp_path / "videos", 1)
    cv2.imwrite(str(videos / "photo.png"), np.zeros((32, 32, 3), np.uint8))
    monkeypatch.chdir(videos)
    argv = ["score", "--video", ".", "--run-dir", str(trained / "runs"), "--frames", "2",
            "--device", "cpu", "--explain", "--no-progress"]
    assert main(argv) == 0
    assert main(argv + ["--rescore"]) == 0  # explain/ now holds PNG folders
    err = capsys.readouterr().err
    assert "photo.png: an image beside videos" in err  # listed, not silently skipped
    (prediction,) = json.loads(Path("predictions/predictions.json").read_text())
    assert prediction["key"] == "clip0" and prediction["status"] == "ok"


@pytest.mark.slow
def test_a_still_image_is_scored_with_a_note(trained, tmp_path, capsys):  # noqa: F811
    from skimage.data import astronaut

    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))
    assert main(_score_argv(trained, image, tmp_path / "out")) == 0
    assert "astronaut: ok: a single frame (a still image?)" in capsys.readouterr().err
    (prediction,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert prediction["status"] == "ok" and prediction["num_faces"] == 1
    assert prediction["note"] == STILL_NOTE
    with (tmp_path / "out" / "predictions.csv").open(encoding="utf-8") as handle:
        assert next(csv.DictReader(handle))["note"] == STILL_NOTE


@pytest.mark.slow
def test_files_are_utf8_under_the_c_locale(trained, tmp_path):  # noqa: F811
    videos = tmp_path / "vidéos"
    videos.mkdir()
    (videos / "clip_é.mpg").symlink_to(GRID / "lbax4n.mpg")
    (videos / "ünreadable.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONIOENCODING="", PYTHONPATH=str(REPO),
               OMP_NUM_THREADS="1")
    page = tmp_path / "report.html"
    argv = [sys.executable, "-m", "deepfakemae.cli",
            *_score_argv(trained, videos, out, "--report", str(page))]
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert done.returncode == 1, done.stderr.decode(errors="replace")  # one unreadable input
    text = (out / "predictions.json").read_bytes().decode("utf-8")
    assert "\\ud" not in text  # no lone surrogates
    by_key = {p["key"]: p for p in json.loads(text)}
    assert by_key["clip_é"]["status"] == "ok" and by_key["ünreadable"]["status"] == "unreadable"
    assert by_key["clip_é"]["path"] == str(videos / "clip_é.mpg")
    with (out / "predictions.csv").open(encoding="utf-8") as handle:
        rows = {r["key"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"clip_é", "ünreadable"} and rows["clip_é"]["status"] == "ok"
    report = page.read_bytes().decode("utf-8")
    assert _report_keys(page) == ["clip_é"] and "\\ud" not in report and "ünreadable" in report

    again = subprocess.run(argv, env=env, capture_output=True, timeout=300)  # a rerun keeps them
    assert again.returncode == 1 and b"2 of 2 videos already scored" in again.stderr, again.stderr
    assert b"Traceback" not in again.stderr and b"clip_" in again.stdout  # the table printed
    assert (out / "predictions.json").read_bytes().decode("utf-8") == text  # no second spelling
