"""run_preprocess / records_from_inputs / the preprocess command on real and broken inputs."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from face_assets import CLIPS, grid_frames, write_video

from deepfakemae.commands.preprocess import add_preprocess_arguments, run_preprocess_command
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.input_files import records_from_inputs
from deepfakemae.faces.pipeline import FaceConfig
from deepfakemae.faces.runner import (
    SettingsMismatch,
    cache_settings,
    check_settings,
    run_preprocess,
    shard_records,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = FaceConfig(frames=4, size=112)


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory) -> Path:
    """Three good clips plus every kind of awkward input, in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    for clip in CLIPS:
        shutil.copy(clip, root / clip.name)
    frames = grid_frames(CLIPS[0], step=5)  # 15 frames
    (root / "bad").mkdir()
    (root / "bad" / "zero.mp4").write_bytes(b"")
    (root / "bad" / "text.mp4").write_text("this is a text file, not a video\n" * 20)
    full = write_video(root / "bad" / "full.mp4", frames).read_bytes()
    (root / "bad" / "full.mp4").unlink()
    (root / "bad" / "truncated.mp4").write_bytes(full[: len(full) // 2])
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(6)]
    write_video(root / "noise.mp4", noise)
    write_video(root / "one_frame.mp4", frames[:1])
    write_video(root / "gray.mkv", [f[..., 1].copy() for f in frames], gray=True)
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("no frames here")
    (root / "frames" / "clip").mkdir(parents=True)
    for i, frame in enumerate(frames[:6]):
        cv2.imwrite(str(root / "frames" / "clip" / f"{i}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return root


EXPECTED = {
    "bbaf2n": "ok", "lbax4n": "ok", "swiz3n": "ok", "one_frame": "ok", "gray": "ok",
    "frames/clip": "ok", "noise": "no_face", "bad/zero": "empty", "bad/text": "unreadable",
    "bad/truncated": "unreadable", "no_images": "empty",
}


def test_records_from_inputs(mixed_inputs, tmp_path):
    records = records_from_inputs(mixed_inputs)
    assert sorted(r.key for r in records) == sorted(EXPECTED)
    assert all(r.label == -1 and r.dataset == "files" and r.split == "test" for r in records)
    single = records_from_inputs(mixed_inputs / "bbaf2n.mpg")
    assert [r.key for r in single] == ["bbaf2n"]
    listing = mixed_inputs / "list.txt"
    listing.write_text("bbaf2n.mpg\n\nbad/zero.mp4\n")
    try:
        assert [r.key for r in records_from_inputs(listing)] == ["bbaf2n", "bad/zero"]
    finally:
        listing.unlink()
    with pytest.raises(ValueError, match="no videos"):
        records_from_inputs(tmp_path)  # an empty input folder is a usage error
    with pytest.raises(FileNotFoundError):
        records_from_inputs(tmp_path / "missing")


@pytest.mark.slow
def test_mixed_inputs_each_get_a_status(mixed_inputs, tmp_path):
    out = tmp_path / "cache"
    summary = run_preprocess(records_from_inputs(mixed_inputs), out, SMALL, progress=False)
    manifest = {r["key"]: r for r in FaceCache(out).manifest()}
    assert {k: r["status"] for k, r in manifest.items()} == EXPECTED
    for record in manifest.values():
        if record["status"] != "ok":  # a reason, and the input it belongs to
            assert record["error"] and Path(record["path"]).name in record["error"]
    assert "zero-byte" in manifest["bad/zero"]["error"]
    assert "no face" in manifest["noise"]["error"]
    assert summary.ok == 6 and summary.failed == {"empty": 2, "no_face": 1, "unreadable": 2}
    cache = FaceCache(out)
    one = cache.read("one_frame")
    assert len(one) == 1 and one.frame_indices.tolist() == [0]
    gray = cache.read("gray")
    assert len(gray) == 4 and gray.crops.shape == (4, 112, 112, 3)
    # a grey source stays grey after alignment (up to JPEG chroma noise)
    assert np.abs(gray.crops[..., 0].astype(int) - gray.crops[..., 2]).mean() < 3
    clip = cache.read("bbaf2n")
    assert clip.meta["frames_sampled"] == 4 and clip.meta["num_frames_total"] == 75
    assert clip.meta["landmarks"] == "dlib" and clip.meta["dataset"] == "files"
    # resume: a second run finds everything done and does no work
    again = run_preprocess(records_from_inputs(mixed_inputs), out, SMALL, progress=False)
    assert again.skipped == len(EXPECTED) and again.ok == 0 and again.num_failed == 0


def test_shards_are_disjoint_and_cover(mixed_inputs):
    records = records_from_inputs(mixed_inputs)
    for n in (1, 2, 3, 5):
        parts = [[r.key for r in shard_records(records, (i, n))] for i in range(n)]
        flat = [k for p in parts for k in p]
        assert len(flat) == len(set(flat)) == len(records)
        assert set(flat) == {r.key for r in records}
        assert parts == [[r.key for r in shard_records(list(reversed(records)), (i, n))]
                         for i in range(n)]  # independent of input order
    with pytest.raises(ValueError):
        shard_records(records, (2, 2))


def _arrays(cache: FaceCache, key: str) -> dict:
    entry = cache.read(key)
    return {"crops": entry.crops, "landmarks": entry.landmarks, "idx": entry.frame_indices,
            "scores": entry.scores, "boxes": entry.boxes}


def _assert_same_cache(a: Path, b: Path, keys: list[str]) -> None:
    ca, cb = FaceCache(a), FaceCache(b)
    for key in keys:
        xa, xb = _arrays(ca, key), _arrays(cb, key)
        for name in xa:
            assert np.array_equal(xa[name], xb[name]), (key, name)


def _finished(cache_root: Path) -> list[Path]:
    """Finished entries (a pathlib glob would also match hidden ``.tmp-*.npz`` partial writes)."""
    return [p for p in (cache_root / "entries").glob("*.npz") if not p.name.startswith(".")]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_cache(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for copy in range(2):  # six videos so that a kill after the first entry leaves work undone
        for clip in CLIPS:
            shutil.copy(clip, inputs / f"{clip.stem}_{copy}.mpg")
    out, ref = tmp_path / "killed", tmp_path / "reference"
    code = ("import sys; from pathlib import Path; "
            "from deepfakemae.faces.input_files import records_from_inputs; "
            "from deepfakemae.faces.pipeline import FaceConfig; "
            "from deepfakemae.faces.runner import run_preprocess; "
            "run_preprocess(records_from_inputs(Path(sys.argv[1])), Path(sys.argv[2]), "
            "FaceConfig(frames=12, size=112), progress=False)")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, str(inputs), str(out)], env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if _finished(out):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_after_kill = len(_finished(out))
    assert 1 <= done_after_kill < 6
    resumed = run_preprocess(records_from_inputs(inputs), out, FaceConfig(frames=12, size=112),
                             progress=False)
    assert resumed.skipped == done_after_kill and resumed.ok == 6 - done_after_kill
    run_preprocess(records_from_inputs(inputs), ref, FaceConfig(frames=12, size=112),
                   progress=False)
    keys = sorted(r.key for r in records_from_inputs(inputs))
    _assert_same_cache(out, ref, keys)
    assert [r["key"] for r in FaceCache(out).manifest()] == keys


@pytest.mark.slow
def test_two_workers_and_two_shards_match_one_process(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for clip in CLIPS:
        shutil.copy(clip, inputs / clip.name)
    records = records_from_inputs(inputs)
    keys = sorted(r.key for r in records)
    one, pool = tmp_path / "one", tmp_path / "pool"
    run_preprocess(records, one, SMALL, progress=False)
    summary = run_preprocess(records, pool, SMALL, workers=2, progress=True)
    assert summary.ok == 3 and summary.faces == 12
    _assert_same_cache(one, pool, keys)
    sharded = tmp_path / "sharded"
    for i in range(2):
        run_preprocess(records, sharded, SMALL, shard=(i, 2), progress=False)
    assert sorted(r["key"] for r in FaceCache(sharded).manifest()) == keys
    _assert_same_cache(one, sharded, keys)


def _cli(argv: list[str]) -> int:
    parser = add_preprocess_arguments(argparse.ArgumentParser())
    return run_preprocess_command(parser.parse_args(argv))


def test_cli_exit_codes(mixed_inputs, tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(CLIPS[0], good / CLIPS[0].name)
    assert _cli(["--input", str(good), "--output", str(tmp_path / "c1"), "--frames", "2",
                 "--size", "64", "--no-progress"]) == 0
    assert "ok 1, failed 0" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    shutil.copy(CLIPS[1], bad / CLIPS[1].name)
    assert _cli(["--input", str(bad), "--output", str(tmp_path / "c2"), "--frames", "2",
                 "--size", "64", "--no-progress", "--shard", "0/1"]) == 1
    out = capsys.readouterr().out
    assert "empty: 1" in out and "zero-byte" in out
    lines = [json.loads(x) for x in (tmp_path / "c2" / "manifest.jsonl").read_text().splitlines()]
    assert {x["key"]: x["status"] for x in lines} == {"zero": "empty", "lbax4n": "ok"}
    assert _cli(["--input", str(tmp_path / "missing"), "--output", str(tmp_path / "c3")]) == 2
    assert _cli(["--input", str(good), "--output", str(tmp_path / "c3"), "--frames", "0"]) == 2
    with pytest.raises(SystemExit):
        _cli(["--input", str(good), "--output", str(tmp_path / "c3"), "--shard", "3/2"])


def test_dataset_mode_records_ffpp_labels(tmp_path):
    """`preprocess --dataset ffpp` walks the FF++ layout and stores labels and methods."""
    root = tmp_path / "ffpp"
    reals = root / "original_sequences" / "youtube" / "c23" / "videos"
    fakes = root / "manipulated_sequences" / "Deepfakes" / "c23" / "videos"
    reals.mkdir(parents=True)
    fakes.mkdir(parents=True)
    frames = grid_frames(CLIPS[0], step=10)
    for name in ("071", "054"):
        write_video(reals / f"{name}.mp4", frames)
    for name in ("071_054", "054_071"):
        write_video(fakes / f"{name}.mp4", frames)
    splits = tmp_path / "splits"
    splits.mkdir()
    for split, pairs in (("train", []), ("val", []), ("test", [["071", "054"]])):
        (splits / f"{split}.json").write_text(json.dumps(pairs))
    parser = add_preprocess_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "ffpp", "--root", str(root), "--split", "test",
                              "--methods", "Deepfakes", "--splits-dir", str(splits),
                              "--output", str(tmp_path / "cache"), "--frames", "2",
                              "--size", "64", "--no-progress"])
    assert run_preprocess_command(args) == 0
    manifest = {r["key"]: r for r in FaceCache(tmp_path / "cache").manifest()}
    assert sorted(manifest) == ["ffpp/c23/Deepfakes/054_071", "ffpp/c23/Deepfakes/071_054",
                                "ffpp/c23/real/054", "ffpp/c23/real/071"]
    assert manifest["ffpp/c23/real/071"]["label"] == 0
    assert manifest["ffpp/c23/Deepfakes/071_054"]["label"] == 1
    assert manifest["ffpp/c23/Deepfakes/071_054"]["method"] == "Deepfakes"
    assert all(r["split"] == "test" and r["status"] == "ok" for r in manifest.values())


def test_dataset_mode_wrong_root_is_a_usage_error(tmp_path, capsys):
    parser = add_preprocess_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", "ffpp", "--root", str(tmp_path / "nowhere"),
                              "--output", str(tmp_path / "cache"), "--no-progress"])
    assert run_preprocess_command(args) == 2
    assert "nowhere" in capsys.readouterr().err


def test_rerun_keeps_the_detector_a_cache_was_made_with(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(CLIPS[0], good / CLIPS[0].name)
    old = tmp_path / "old"  # a cache made before MTCNN existed: dlib alone
    args = ["--input", str(good), "--frames", "2", "--size", "64", "--no-progress"]
    assert _cli([*args, "--output", str(old), "--detector", "dlib"]) == 0
    assert _cli([*args, "--output", str(old)]) == 0  # resumes, no settings mismatch
    assert "already done 1" in capsys.readouterr().out
    assert json.loads((old / "cache.json").read_text())["settings"]["detector"].startswith(
        "dlib-hog max_side")
    new = tmp_path / "new"
    assert _cli([*args, "--output", str(new)]) == 0
    assert json.loads((new / "cache.json").read_text())["settings"]["detector"].startswith(
        "dlib-hog+mtcnn max_side")
    assert json.loads((new / "cache.json").read_text())["face_detector"] == "dlib+mtcnn"
    assert _cli([*args, "--output", str(new), "--detector", "dlib"]) == 2  # other settings
    assert "--allow-mixed-settings" in capsys.readouterr().err


def test_the_face_detector_is_read_from_its_field_or_an_old_cache_s_setting():
    from deepfakemae.faces.runner import recorded_face_detector

    for name in ("dlib", "dlib+mtcnn", "mtcnn"):
        settings = cache_settings(FaceConfig(frames=2, size=64, detector=name))
        assert recorded_face_detector({"settings": settings, "face_detector": name}) == name
        assert recorded_face_detector({"settings": settings, "mixed": []}) == name  # old cache
    assert recorded_face_detector(None) is None and recorded_face_detector({}) is None
    assert recorded_face_detector({"settings": {"detector": "other max_side=640"}}) is None


def test_face_detector_flag_and_its_old_spelling(tmp_path, capsys):
    parser = add_preprocess_arguments(argparse.ArgumentParser())
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "c")]
    assert parser.parse_args([*base, "--face-detector", "mtcnn"]).face_detector == "mtcnn"
    assert capsys.readouterr().err == ""
    assert parser.parse_args([*base, "--detector", "dlib"]).face_detector == "dlib"
    assert capsys.readouterr().err.strip() == (
        "note: --detector is now --face-detector (the old spelling still works)")
    assert parser.parse_args(base).face_detector is None
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--detector", "hog"])


def test_a_cache_made_with_mirrored_borders_is_not_resumed_silently(tmp_path):
    """``cache.json`` of a cache from before the constant border fill (no ``border``): a run
    refuses to add to it unless told to, naming the border."""
    config = FaceConfig(frames=2, size=64)
    cache = FaceCache(tmp_path / "old")
    old = {k: v for k, v in cache_settings(config).items() if k != "border"}
    cache.root.mkdir()
    cache.write_settings({"settings": old, "mixed": []})
    with pytest.raises(SettingsMismatch, match="border None .* 'constant'.*mirrored borders"):
        check_settings(cache, config)
    check_settings(cache, config, allow_mixed=True)
    assert cache.read_settings()["mixed"] == [cache_settings(config)]
