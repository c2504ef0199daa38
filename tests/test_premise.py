"""`deepfakemae premise`: fixed per-frame masks shared by a fake and its real, masked-patch errors
and paired figures checked against a hand computation, the command's files on a demo-like cache,
its errors, and pooling over folds."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_modules import SourceSpec, select_videos
from deepfakemae.cli import main
from deepfakemae.commands.premise import PremiseError, cv_premise, demo_premise, pool_video_files
from deepfakemae.constants import IMAGENET_MEAN, IMAGENET_STD
from deepfakemae.faces.cache import FaceCache, FaceEntry
from deepfakemae.masking import PART_NAMES, FacialPartMasker
from deepfakemae.models.mae import create_mae
from deepfakemae.premise import VideoError, measure, summarise
from tests.conftest import face_crop

SIZE = 64  # mae_vit_micro: 64 px, patch 8
FRAMES = 4


def _seed(key: str, frame: int, part: str) -> int:
    """The documented seed rule, computed here independently of the module."""
    digest = hashlib.blake2b(f"{key}|{frame}|{part}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _frames(face: dict, n: int, seed: int):
    out = []
    for t in range(n):
        rng = np.random.default_rng([seed, t])
        out.append(face_crop(face, SIZE, shift=tuple(rng.uniform(-3, 3, 2))))
    return np.stack([c for c, _ in out]), np.stack([p for _, p in out])


def _entry(key: str, crops, landmarks, method: str, split: str = "test") -> FaceEntry:
    n = len(crops)
    label = 0 if method == "real" else 1
    return FaceEntry(key=key, crops=crops, landmarks=landmarks.astype(np.float32),
                     frame_indices=np.arange(n, dtype=np.int64) * 5,
                     scores=np.ones(n, np.float32), boxes=np.zeros((n, 4), np.float32),
                     meta={"label": label, "dataset": "ffpp", "method": method, "split": split,
                           "path": f"/videos/{key}.mp4"})


def _swap_lips(crops, landmarks, fill):
    """A part swap: the mouth's bounding box (grown by 2 px) of every frame replaced by ``fill``
    (an RGB colour or same-shaped crops to copy from)."""
    out = crops.copy()
    for t, points in enumerate(landmarks):
        mouth = points[48:68]
        x0, y0 = np.floor(mouth.min(0) - 2).astype(int)
        x1, y1 = np.ceil(mouth.max(0) + 2).astype(int)
        src = fill if np.ndim(fill) == 1 else fill[t, y0:y1, x0:x1]
        out[t, y0:y1, x0:x1] = src
    return out


@pytest.fixture(scope="module")
def swap_cache(astronaut_face_session, tmp_path_factory) -> Path:
    """Two real speakers (000, 002) and two part-swap fakes on them, FF++ layout: 000_001 has
    its lips from a brighter copy of the face, 002_003 grey lips. The fakes' own landmarks are
    shifted by 3 px, so masks drawn from them would differ from their reals'."""
    face = astronaut_face_session
    root = tmp_path_factory.mktemp("premise_swap")
    cache = FaceCache(root)
    for target, source, seed in (("000", "001", 1), ("002", "003", 2)):
        crops, lms = _frames(face, FRAMES, seed)
        cache.write(_entry(f"ffpp/c23/real/{target}", crops, lms, "real"))
        fill = (np.clip(crops.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
                if target == "000" else np.uint8([124, 116, 104]))
        fake = _swap_lips(crops, lms, fill)
        cache.write(_entry(f"ffpp/c23/LipsSwap/{target}_{source}", fake, lms + 3.0, "LipsSwap"))
    cache.rebuild_manifest()
    return root


def _zero_decoder_mae():
    """A micro MAE whose decoder predicts 0 everywhere: a masked patch's error is then the mean
    of its squared normalised pixels, which the test computes by hand."""
    torch.manual_seed(0)
    mae = create_mae("mae_vit_micro")
    with torch.no_grad():
        mae.decoder_pred.weight.zero_()
        mae.decoder_pred.bias.zero_()
    return mae


def _hand_errors(cache_root: Path, key: str, mask_key: str, part: str, ratio: float) -> np.ndarray:
    """Per-frame masked MSE of a zero-predicting MAE, from the decoded cache crops and masks
    drawn from ``mask_key``'s landmarks with the documented seed."""
    cache = FaceCache(cache_root)
    entry, mask_entry = cache.read(key), cache.read(mask_key)
    x = (entry.crops.astype(np.float64) / 255 - IMAGENET_MEAN) / IMAGENET_STD  # (T, H, W, 3)
    g = SIZE // 8
    patches = x.reshape(len(x), g, 8, g, 8, 3).transpose(0, 1, 3, 2, 4, 5).reshape(len(x), g * g, -1)
    per_patch = (patches ** 2).mean(-1)  # (T, L)
    masker = FacialPartMasker(part, ratio, "algorithm1", SIZE, 8)
    out = []
    for t, frame in enumerate(entry.frame_indices):
        gen = torch.Generator().manual_seed(_seed(mask_key, int(frame), part))
        mask = masker(torch.from_numpy(mask_entry.landmarks[t:t + 1]), generator=gen).mask[0]
        out.append(per_patch[t][mask.numpy()].mean())
    return np.array(out)


def test_paired_figures_match_a_hand_computation(swap_cache):
    videos = select_videos(SourceSpec("t", str(swap_cache), "ffpp", "test"))
    measured = measure(_zero_decoder_mae(), videos, mask_ratio=0.5, part_variant="algorithm1")
    by = {(v.key, v.part): v for v in measured}
    expected = {}
    for (key, part), v in by.items():
        real = "ffpp/c23/real/" + key.rsplit("/", 1)[1][:3]
        assert v.mask_key == real  # a fake is masked from its real target
        expected[key, part] = _hand_errors(swap_cache, key, real, part, 0.5)
        np.testing.assert_allclose(v.errors, expected[key, part], rtol=1e-5)
    rows = {r.part: r for r in summarise(measured, n_boot=200)}
    assert set(rows) == set(PART_NAMES)
    for part, row in rows.items():
        diffs = [expected[f"ffpp/c23/LipsSwap/{t}_{s}", part].mean()
                 - expected[f"ffpp/c23/real/{t}", part].mean() for t, s in (("000", "001"),
                                                                            ("002", "003"))]
        frame_diffs = np.concatenate([expected[f"ffpp/c23/LipsSwap/{t}_{s}", part]
                                      - expected[f"ffpp/c23/real/{t}", part]
                                      for t, s in (("000", "001"), ("002", "003"))])
        assert (row.num_real, row.num_fake, row.num_pairs) == (2, 2, 2)
        assert row.num_frame_pairs == 2 * FRAMES
        assert row.share.value == pytest.approx(np.mean(np.array(diffs) > 0))
        assert row.mean_diff.value == pytest.approx(np.mean(diffs), rel=1e-5, abs=1e-9)
        assert row.frame_share.value == pytest.approx(np.mean(frame_diffs > 0))
        assert row.share.low <= row.share.value <= row.share.high
    # the swap touches the lips only: the eyes band's pixels differ only by JPEG's chroma
    # upsampling across block edges
    assert abs(rows["eyes"].mean_diff.value) < 1e-3
    # brighter lips reconstruct worse than the real's, mean-grey lips (0 in normalised space,
    # what this decoder predicts) better
    lips = {t: by[f"ffpp/c23/LipsSwap/{t}_{s}", "lips"].error - by[f"ffpp/c23/real/{t}",
                                                                   "lips"].error
            for t, s in (("000", "001"), ("002", "003"))}
    assert lips["000"] > 0 > lips["002"]
    assert rows["lips"].share.value == 0.5


def test_a_fake_and_its_real_get_the_same_masks(swap_cache, tmp_path):
    """A "fake" with its real's pixels but other landmarks: identical errors at every frame, for
    any MAE, only if it is masked exactly like its real."""
    cache = FaceCache(swap_cache)
    real = cache.read("ffpp/c23/real/000")
    copy_root = tmp_path / "copy"
    copy = FaceCache(copy_root)
    copy.write(_entry("ffpp/c23/real/000", real.crops, real.landmarks, "real"))
    copy.write(_entry("ffpp/c23/EyesSwap/000_001", real.crops, real.landmarks + 5.0, "EyesSwap"))
    copy.rebuild_manifest()
    torch.manual_seed(1)
    videos = select_videos(SourceSpec("t", str(copy_root), "ffpp", "test"))
    out = {(v.key, v.part): v for v in measure(create_mae("mae_vit_micro"), videos, 0.5,
                                                "algorithm1")}
    for part in PART_NAMES:
        fake, original = out["ffpp/c23/EyesSwap/000_001", part], out["ffpp/c23/real/000", part]
        np.testing.assert_array_equal(fake.errors, original.errors)
        assert fake.target == original.key
    # the fake's own landmarks would have given other masks (so the check above can fail)
    masker = FacialPartMasker("eyes", 0.5, "algorithm1", SIZE, 8)
    own, real_lm = (torch.from_numpy(lm[:1]) for lm in (real.landmarks + 5.0, real.landmarks))
    draws = [masker(lm, generator=torch.Generator().manual_seed(_seed("ffpp/c23/real/000", 0,
                                                                      "eyes"))).mask
             for lm in (own, real_lm)]
    assert not torch.equal(*draws)


def test_summary_figures_on_known_errors():
    def video(key, label, method, errors, target=None):
        return VideoError("test", method, key, label, "lips", np.arange(len(errors)) * 2,
                          np.array(errors, float), target or key, target)

    reals = [video("r/real/0", 0, "real", [0.2, 0.4]), video("r/real/1", 0, "real", [0.5, 0.5]),
             video("r/real/2", 0, "real", [0.1])]
    fakes = [video("r/X/0_9", 1, "X", [0.6, 0.2], "r/real/0"),  # mean 0.4 vs 0.3: above
             video("r/X/1_9", 1, "X", [0.3, 0.5], "r/real/1"),  # mean 0.4 vs 0.5: below
             video("r/X/7_9", 1, "X", [0.9])]  # no measured real: AUC only
    (row,) = summarise(reals + fakes, n_boot=500)
    assert (row.num_real, row.num_fake, row.num_pairs, row.num_frame_pairs) == (3, 3, 2, 4)
    assert row.share.value == 0.5
    assert row.mean_diff.value == pytest.approx(((0.4 - 0.3) + (0.4 - 0.5)) / 2)
    assert row.frame_share.value == pytest.approx(1 / 4)  # 0.6>0.2; 0.2<0.4, 0.3<0.5, 0.5=0.5
    # AUC over video means: fakes 0.4, 0.4, 0.9 vs reals 0.3, 0.5, 0.1: 2 + 2 + 3 of 9 above
    assert row.auc.value == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="measured twice"):
        summarise(reals + reals[:1])


# -- the command on a demo-like cache ---------------------------------------------------------

DEMO_LIKE = [("000", "001", "train"), ("002", "003", "train"), ("004", "005", "test")]


def _demo_like_videos() -> list[dict]:
    vids = []
    for a, b, split in DEMO_LIKE:
        for vid in (a, b):
            vids.append({"key": f"ffpp/c23/real/{vid}", "label": 0, "dataset": "ffpp",
                         "method": "real", "split": split, "frames": 3})
        for method in ("LipsSwap", "SelfBlend"):
            for t, s in ((a, b), (b, a)):
                vids.append({"key": f"ffpp/c23/{method}/{t}_{s}", "label": 1, "dataset": "ffpp",
                             "method": method, "split": split, "frames": 3})
    return vids


@pytest.fixture(scope="module")
def demo_like(make_face_cache, tmp_path_factory) -> dict[str, Path]:
    """A demo-like cache (FF++ layout, 3 speaker pairs, 2 methods, 3 frames a video) and a
    micro stage-1 checkpoint in a run layout (``<run>/pretrain/checkpoints/last.ckpt``)."""
    from deepfakemae.modules.pretrain import MAEPretrainModule

    root = tmp_path_factory.mktemp("premise_demo")
    cache = make_face_cache(root / "cache", _demo_like_videos(), size=SIZE)
    ckpt = root / "run" / "pretrain" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    module = MAEPretrainModule(preset="mae_vit_micro", mask_ratio=0.75)
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    torch.save(saved, ckpt)
    return {"cache": cache, "checkpoint": ckpt, "run": root / "run"}


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline with its cache and config folders in this test's tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    yield
    import wandb

    wandb.teardown()  # W&B keeps the settings of its first run per process


@pytest.mark.slow
def test_command_writes_its_files_per_split(demo_like, tmp_path, wandb_offline, capsys):
    out = tmp_path / "out"
    code = main(["premise", "--checkpoint", str(demo_like["checkpoint"]), "--cache",
                 str(demo_like["cache"]), "--splits", "train,test", "--output", str(out),
                 "--bootstrap", "50", "--frames", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    rows = _rows(out / "premise.csv")
    assert {(r["split"], r["method"], r["part"]) for r in rows} == {
        (s, m, p) for s in ("train", "test") for m in ("LipsSwap", "SelfBlend") for p in PART_NAMES}
    test_rows = [r for r in rows if r["split"] == "test"]
    assert {(r["num_real_videos"], r["num_fake_videos"], r["num_pairs"],
             r["num_frame_pairs"]) for r in test_rows} == {("2", "2", "2", "4")}
    for r in rows:
        assert 0 <= float(r["auc_low"]) <= float(r["auc"]) <= float(r["auc_high"]) <= 1
    videos = _rows(out / "premise_videos.csv")
    assert len(videos) == 18 * 3  # 18 videos x 3 parts
    assert all(len(v["frame_errors"].split()) == 2 for v in videos)  # --frames 2 of 3
    assert {v["mask_key"] for v in videos if v["video_key"] == "ffpp/c23/LipsSwap/004_005"} == {
        "ffpp/c23/real/004"}
    md = (out / "premise.md").read_text(encoding="utf-8")
    assert "| test | LipsSwap | lips | 2/2 |" in md and "memorisation" in md
    assert "ratio 0.75" in md  # the checkpoint's masking
    assert md.split("\n\n")[-1].strip() in printed
    assert (out / "premise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(out.glob("wandb/offline-run-*"))
    assert not list(out.glob(".tmp-*"))


def test_command_errors_name_the_file_and_the_fix(demo_like, tmp_path, capsys):
    base = ["premise", "--cache", str(demo_like["cache"]), "--output", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", str(tmp_path / "none.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "none.ckpt does not exist" in err and "train the stage" in err
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    assert main(["premise", "--checkpoint", str(demo_like["checkpoint"]), "--cache", str(empty),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "deepfakemae preprocess" in err
    assert main([*base, "--checkpoint", str(demo_like["checkpoint"]), "--splits", "val"]) == 2
    assert "split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--checkpoint", str(demo_like["checkpoint"]), "--frames", "0"])
    assert "--frames: must be at least 1" in capsys.readouterr().err


def test_fakes_without_their_real_are_named(demo_like, make_face_cache, tmp_path, monkeypatch,
                                            capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    vids = [{"key": k, "label": int("real" not in k), "dataset": "ffpp",
             "method": k.split("/")[2], "split": "test", "frames": 2}
            for k in ("ffpp/c23/real/000", "ffpp/c23/LipsSwap/000_001",
                      "ffpp/c23/LipsSwap/002_003")]
    cache = make_face_cache(tmp_path / "cache", vids, size=SIZE)
    assert main(["premise", "--checkpoint", str(demo_like["checkpoint"]), "--cache", str(cache),
                 "--output", str(tmp_path / "o"), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "| test | LipsSwap | lips | 1/2 |" in out  # both fakes count in the AUC
    assert "1 fake video(s) have no measured real target" in out
    assert "ffpp/c23/LipsSwap/002_003 → ffpp/c23/real/002" in out
    (row,) = [r for r in _rows(tmp_path / "o" / "premise.csv") if r["part"] == "lips"]
    assert row["num_pairs"] == "1"


@pytest.mark.slow
def test_demo_table_and_pooled_folds(demo_like, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    text = demo_premise(demo_like["run"], demo_like["cache"], n_boot=50)
    assert "| test | SelfBlend | eyes | 2/2 |" in text
    assert (demo_like["run"] / "premise" / "premise.csv").is_file()

    # two folds, each testing one pair with the same stage-1 model (checkpoint copied)
    root = tmp_path / "cv"
    splits = []
    for i, test in enumerate([DEMO_LIKE[0], DEMO_LIKE[2]]):
        folder = root / "splits" / f"fold_{i}"
        folder.mkdir(parents=True)
        rest = [list(p[:2]) for p in DEMO_LIKE if p != test]
        for name, pairs in (("train", rest), ("val", []), ("test", [list(test[:2])])):
            (folder / f"{name}.json").write_text(json.dumps(pairs))
        ckpt = root / f"fold_{i}" / "pretrain" / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(demo_like["checkpoint"].read_bytes())
        splits.append(folder)
    text = cv_premise(root, splits, demo_like["cache"], n_boot=50)
    assert "2 identity-disjoint folds pooled" in text
    pooled = _rows(root / "premise_videos.csv")
    per_fold = [_rows(root / f"fold_{i}" / "premise" / "premise_videos.csv") for i in range(2)]
    assert sorted(r["video_key"] for r in pooled) == sorted(
        r["video_key"] for rows in per_fold for r in rows)
    assert {r["num_real_videos"] for r in _rows(root / "premise.csv")} == {"4"}
    assert (root / "premise.md").is_file() and (root / "premise.png").is_file()
    with pytest.raises(PremiseError, match="test each video once"):
        pool_video_files([root / "fold_0" / "premise" / "premise_videos.csv"] * 2)
