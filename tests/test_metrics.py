"""Metrics: hand-computed AUC/AP/EER/ACC, references on random data, video level, the ScoreBook's
DDP deduplication."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepfakemae.metrics import (
    ScoreBook,
    compute_metrics,
    eer_from_roc,
    roc_curve,
    set_metrics,
    video_level,
)


def frame_and_video_metrics(scores, labels, keys, prefix: str = "") -> dict[str, float]:
    """Reference: ``{prefix}frame/<m>`` and ``{prefix}video/<m>`` computed directly."""
    out = {f"{prefix}frame/{k}": v for k, v in compute_metrics(scores, labels).items()}
    vs, vl, _ = video_level(scores, labels, keys)
    out.update({f"{prefix}video/{k}": v for k, v in compute_metrics(vs, vl).items()})
    return out


def _book_metrics(book: ScoreBook, prefix: str = "") -> tuple[dict[str, float], int]:
    """The ScoreBook's metrics of its one test set in :func:`frame_and_video_metrics`' names,
    and the number of rows it kept."""
    (rows,) = book.gather().values()
    metrics, _ = set_metrics(rows)
    out = {f"{prefix}{level}/{m}": metrics[f"score/{level}_{m}"]
           for level in ("frame", "video") for m in ("auc", "ap", "eer", "acc")}
    return out, len(rows.keys)


def _add(book: ScoreBook, scores, labels, keys, frames) -> None:
    book.add_batch({"frame_index": frames, "label": labels, "video_key": list(keys)},
                   {"score": scores})


def test_hand_computed_case() -> None:
    # positives 0.9, 0.6; negatives 0.6, 0.2
    scores = [0.9, 0.6, 0.6, 0.2]
    labels = [1, 1, 0, 0]
    m = compute_metrics(scores, labels)
    # AUC: pairs (pos > neg) = 1 + 1 + ½ (tie) + 1 over 4
    assert m["auc"] == pytest.approx(3.5 / 4)
    # AP: thresholds 0.9 (P=1, R=½) and 0.6 (P=⅔, R=1) → ½·1 + ½·⅔
    assert m["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # ROC (0,0) (0,½) (½,1) (1,1): FPR - FNR goes -½ → +½ on the middle segment, crossing at its
    # midpoint (¼, ¾), so EER = ¼
    assert m["eer"] == pytest.approx(0.25)
    # ACC@0.5: 0.9→1 ✓, 0.6→1 ✓, 0.6→1 ✗, 0.2→0 ✓
    assert m["acc"] == pytest.approx(0.75)


def test_eer_exact_vertex_and_perfect() -> None:
    # ROC (0,0) (0,½) (½,½) (½,1) (1,1): FPR = FNR = ½ at a vertex
    assert compute_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])["eer"] == pytest.approx(0.5)
    perfect = compute_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert perfect["auc"] == 1.0 and perfect["eer"] == 0.0 and perfect["ap"] == 1.0
    inverted = compute_metrics([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    assert inverted["auc"] == 0.0 and inverted["eer"] == 1.0
    # interpolation on a hand-made curve (0,0) (0.2,0.6) (1,1): FPR - FNR = -0.2 at the middle vertex
    # and +1 at (1,1), so the crossing is 1/6 of the way along the last segment: FPR = 0.2 + 0.8/6
    # = 1/3 and FNR = 0.4 - 0.4/6 = 1/3
    assert eer_from_roc(np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.6, 1.0])) == pytest.approx(1 / 3)


def _auc_pairs(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _ap_steps(s: np.ndarray, y: np.ndarray) -> float:
    ap, prev_r = 0.0, 0.0
    for t in np.unique(s)[::-1]:
        pred = s >= t
        tp = (pred & (y == 1)).sum()
        r = tp / (y == 1).sum()
        ap += (r - prev_r) * tp / pred.sum()
        prev_r = r
    return float(ap)


def _eer_brute(s: np.ndarray, y: np.ndarray) -> float:
    # FPR and FNR along a fine threshold sweep; EER where |FPR - FNR| is smallest (approximate)
    best, out = 2.0, 0.0
    for t in np.unique(np.concatenate([s, [np.inf]])):
        fpr = ((s >= t) & (y == 0)).sum() / (y == 0).sum()
        fnr = ((s < t) & (y == 1)).sum() / (y == 1).sum()
        if abs(fpr - fnr) < best:
            best, out = abs(fpr - fnr), (fpr + fnr) / 2
    return float(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_reference_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1).round(2)  # rounding creates ties
    m = compute_metrics(s, y)
    assert m["auc"] == pytest.approx(_auc_pairs(s, y), abs=1e-6)
    assert m["ap"] == pytest.approx(_ap_steps(s, y), abs=1e-6)
    assert m["acc"] == pytest.approx(float(((s > 0.5).astype(int) == y).mean()), abs=1e-6)
    assert m["eer"] == pytest.approx(_eer_brute(s, y), abs=0.02)
    fpr, tpr, thr = roc_curve(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert m["eer"] == pytest.approx(eer_from_roc(fpr, tpr))


def test_single_class_and_bad_input() -> None:
    m = compute_metrics([0.2, 0.7], [1, 1])
    assert math.isnan(m["auc"]) and math.isnan(m["eer"]) and m["acc"] == 0.5
    with pytest.raises(ValueError, match="labels must be 0"):
        compute_metrics([0.2, 0.7], [0, 2])
    with pytest.raises(ValueError, match="empty|no scores"):
        compute_metrics([], [])
    with pytest.raises(ValueError, match="differ"):
        compute_metrics([0.1, 0.2], [0])


def test_video_level_mean_and_label_check() -> None:
    scores = torch.tensor([0.2, 0.4, 0.9, 0.6, 0.0])
    labels = torch.tensor([0, 0, 1, 1, 0])
    keys = ["a", "a", "b", "b", "c"]
    vs, vl, vk = video_level(scores, labels, keys)
    assert vk == ["a", "b", "c"]
    torch.testing.assert_close(vs, torch.tensor([0.3, 0.75, 0.0]))
    assert vl.tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="different labels"):
        video_level(scores, torch.tensor([0, 1, 1, 1, 0]), keys)
    m = frame_and_video_metrics(scores, labels, keys, prefix="val/")
    assert m["val/video/auc"] == 1.0 and "val/frame/eer" in m


def test_score_book_keeps_one_row_per_frame() -> None:
    book = ScoreBook()
    _add(book, torch.tensor([0.1, 0.2, 0.3, 0.1, 0.5]), torch.tensor([0, 0, 1, 0, 1]),
         ["a", "a", "b", "a", "b"], torch.tensor([0, 8, 0, 0, 16]))
    (rows,) = book.gather().values()
    assert rows.keys == ["a", "a", "b", "b"] and rows.frames.tolist() == [0, 8, 0, 16]
    np.testing.assert_allclose(rows.scores["score"], [0.1, 0.2, 0.3, 0.5], rtol=1e-6)


def test_score_book_matches_direct_metrics_with_padding_duplicates() -> None:
    rng = np.random.default_rng(0)
    n = 30
    keys = [f"vid{i // 3}" for i in range(n)]  # 10 videos × 3 frames
    labels = torch.tensor([(i // 3) % 2 for i in range(n)])
    frames = torch.tensor([i % 3 for i in range(n)])
    scores = torch.tensor(np.clip(rng.normal(0.3 + 0.4 * labels.numpy(), 0.25), 0, 1), dtype=torch.float32)

    book = ScoreBook()
    for lo in range(0, n, 7):
        _add(book, scores[lo : lo + 7], labels[lo : lo + 7], keys[lo : lo + 7], frames[lo : lo + 7])
    # what DistributedSampler padding does: the first samples come around again
    _add(book, scores[:2], labels[:2], keys[:2], frames[:2])
    got, kept = _book_metrics(book, prefix="test/")
    assert kept == n
    want = frame_and_video_metrics(scores, labels, keys, prefix="test/")
    assert got == pytest.approx(want)
    assert book.gather()["test"].keys[0] == "vid0"
    book.reset()
    assert book.gather() == {}


def _ddp_worker(rank: int, world: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    scores, labels, keys, frames = _ddp_data()
    n = len(keys)
    # DistributedSampler(shuffle=False) order: rank r takes r, r+world, ...; padded to equal length
    total = -(-n // world) * world
    idx = [i % n for i in range(total)][rank::world]
    book = ScoreBook()
    for lo in range(0, len(idx), 4):
        sel = idx[lo : lo + 4]
        _add(book, scores[sel], labels[sel], [keys[i] for i in sel], frames[sel])
    metrics, kept = _book_metrics(book)
    if rank == 0:
        torch.save({"metrics": metrics, "n": kept}, result_path)
    dist.destroy_process_group()


def _ddp_data():
    g = torch.Generator().manual_seed(0)
    n = 23  # not a multiple of the world size → padding duplicates
    labels = torch.tensor([(i // 2) % 2 for i in range(n)])
    scores = (0.3 + 0.4 * labels + 0.3 * torch.randn(n, generator=g)).clamp(0, 1)
    keys = [f"v{i // 2}" for i in range(n)]
    frames = torch.tensor([i % 2 for i in range(n)])
    return scores, labels, keys, frames


@pytest.mark.slow
def test_score_book_ddp_gloo_equals_single_process(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    res = torch.load(out, weights_only=True)
    scores, labels, keys, _ = _ddp_data()
    assert res["n"] == len(keys)
    assert res["metrics"] == pytest.approx(frame_and_video_metrics(scores, labels, keys))


def test_clip_windows_count_each_frame_once(make_face_cache, tmp_path) -> None:
    """A 32-frame video scored in tiled 5-frame clips (last window overlaps) gives 32 frame rows;
    a frame in two windows gets their mean; the video score is the mean of its 32 frames."""
    from data_modules.datamodule import DeepfakeDataModule
    from data_modules.datasets import SourceSpec

    vids = [{"key": f"ffpp/c23/{m}/test_000", "label": int(m != "real"), "dataset": "ffpp",
             "method": m, "split": "test", "frames": 32} for m in ("real", "Deepfakes")]
    root = str(make_face_cache(tmp_path / "cache", vids, size=32))
    spec = [SourceSpec("ffpp", root, "ffpp", "test")]
    dm = DeepfakeDataModule(train=spec, val=spec, test=spec, img_size=32, batch_size=3,
                            eval_mode="clip", clip_len=5)
    dm.setup("test")
    book, windows = ScoreBook(), {}
    for batch in dm.test_dataloader()[0]:
        clip = batch["image"].mean(dim=(1, 2, 3, 4)).sigmoid()  # (B,) one score per clip
        frame = batch["image"].mean(dim=(2, 3, 4)).sigmoid()  # (B, T) one score per frame
        book.add_batch(batch, {"clip": clip, "frame": frame})
        for key, fi, c in zip(batch["video_key"], batch["frame_index"].tolist(), clip.tolist(),
                              strict=True):
            for f in fi:
                windows.setdefault((key, f), []).append(c)
    rows = book.gather()["ffpp"]
    pairs = list(zip(rows.keys, rows.frames.tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) == 64
    assert sum(len(w) == 2 for w in windows.values()) == 2 * 3  # frames 27-29 overlap
    want = np.array([np.mean(windows[p]) for p in pairs])
    np.testing.assert_allclose(rows.scores["clip"], want, rtol=1e-6)
    metrics, _ = set_metrics(rows)
    v_scores, _, v_keys = video_level(torch.as_tensor(rows.scores["clip"]),
                                      torch.as_tensor(rows.labels), rows.keys)
    for key, score in zip(v_keys, v_scores.tolist(), strict=True):
        mine = want[np.array(rows.keys) == key]
        assert len(mine) == 32 and score == pytest.approx(float(mine.mean()))
    assert metrics["num_frames"] == 64.0
