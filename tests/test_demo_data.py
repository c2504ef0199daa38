"""The GRID demo dataset: FF++ layout, splits, fake regions, determinism, idempotent reruns."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from deepfakemae.commands.demo_data import add_demo_data_arguments, run_demo_data_command
from deepfakemae.synth import swap
from deepfakemae.synth.demo_data import (
    ALL_METHODS,
    ATTRIBUTION,
    CACHE_DIR,
    DemoDataError,
    build_demo_dataset,
    fake_video_path,
    grid_clip_paths,
    read_video_frames,
    real_video_path,
)

FRAMES = 6
IDS = [f"{i:03d}" for i in range(10)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """All four methods, first FRAMES frames of every clip."""
    return build_demo_dataset(tmp_path_factory.mktemp("demo") / "ffpp", seed=0, frames=FRAMES,
                              progress=False)


def _pairs(root: Path) -> dict[str, list[list[str]]]:
    return {s: json.loads((root / "splits" / f"{s}.json").read_text())
            for s in ("train", "val", "test")}


def _landmarks(root: Path, vid: str) -> np.ndarray:
    clip = json.loads((root / "demo_sources.json").read_text())["sources"][vid]
    with np.load(root / CACHE_DIR / "landmarks" / f"{Path(clip).stem}.npz") as data:
        return data["landmarks"]  # (T, 68, 2)


def test_bundled_clips_and_attribution():
    clips = grid_clip_paths()
    assert len(clips) == 10 and [p.name for p in clips] == sorted(p.name for p in clips)
    readme = (clips[0].parent / "README.md").read_text()
    assert "M. Cooke, J. Barker, S. Cunningham, X. Shao (2006), CC BY 4.0" in readme


def test_ffpp_layout(demo: Path):
    for vid in IDS:
        path = real_video_path(demo, vid)
        assert path == demo / f"original_sequences/youtube/c23/videos/{vid}.mp4"
        frames = read_video_frames(path)
        assert frames.shape == (FRAMES, 288, 360, 3) and frames.dtype == np.uint8
    names = {f"{t}_{s}.mp4" for pairs in _pairs(demo).values() for a, b in pairs
             for t, s in ((a, b), (b, a))}
    assert len(names) == 10
    for method in ALL_METHODS:
        folder = demo / "manipulated_sequences" / method / "c23" / "videos"
        assert {p.name for p in folder.iterdir()} == names
    assert not list(demo.rglob("*.tmp*")), "temporary files left behind"
    sources = json.loads((demo / "demo_sources.json").read_text())
    assert sources["attribution"] == ATTRIBUTION
    assert sources["sources"] == {vid: p.name for vid, p in zip(IDS, grid_clip_paths(), strict=True)}
    assert sources["seed"] == 0 and sources["frames"] == FRAMES


def test_splits_are_official_format_and_identity_disjoint(demo: Path):
    splits = _pairs(demo)
    assert splits == {"train": [["000", "001"], ["002", "003"], ["004", "005"]],
                      "val": [["006", "007"]], "test": [["008", "009"]]}
    owners = [set(v for pair in pairs for v in pair) for pairs in splits.values()]
    assert [len(o) for o in owners] == [6, 2, 2]
    assert set.union(*owners) == set(IDS) and sum(map(len, owners)) == 10


@pytest.mark.parametrize("method,region,grow", [("FaceSwapWarp", "face", 0.05),
                                                ("LipsSwap", "mouth", 0.15),
                                                ("EyesSwap", "eyes", 0.15),
                                                ("SelfBlend", "face", 0.1)])
def test_fakes_change_the_region_only(demo: Path, method: str, region: str, grow: float):
    target, source = "002", "003"
    real = read_video_frames(real_video_path(demo, target)).astype(np.float32)
    fake = read_video_frames(fake_video_path(demo, method, target, source)).astype(np.float32)
    assert fake.shape == real.shape
    points = _landmarks(demo, target)
    diff = np.abs(fake - real).mean(-1)  # (T, H, W)
    inside, outside, share = [], [], []
    for i in range(FRAMES):
        width = swap.face_width(points[i])
        core = swap.region_mask(points[i], region, diff.shape[1:]).astype(bool)
        part = swap.region_mask(points[i], region, diff.shape[1:], grow * width).astype(bool)
        face = swap.region_mask(points[i], "face", diff.shape[1:], 0.15 * width).astype(bool)
        inside.append(diff[i][core].mean())
        outside.append(diff[i][~face].mean())
        changed = diff[i] > 10.0  # clearly changed pixels, above the codec's noise
        share.append(changed[part & face].sum() / max(changed[face].sum(), 1))
    assert np.mean(inside) > 4.0, f"{method}: the region barely changed"
    assert np.mean(outside) < 1.5, f"{method}: pixels outside the face changed"
    assert np.mean(share) > 0.9, f"{method}: the face changed outside the {region}"


def test_swap_region_keeps_outside_pixels_exactly():
    clips = grid_clip_paths()
    target = read_video_frames(clips[0], 1)[0]
    source = read_video_frames(clips[1], 1)[0]
    from deepfakemae.synth.demo_data import ClipLandmarker

    landmarker = ClipLandmarker()
    tp, sp = landmarker(target[None])[0][0], landmarker(source[None])[0][0]
    rng = np.random.default_rng(0)
    for region in ("face", "mouth", "eyes"):
        params = swap.SwapParams.sample(region, rng)
        out = swap.swap_region(target, tp, source, sp, params)
        grown = swap.region_mask(tp, region, target.shape[:2],
                                 max(params.grow, 0.0) * swap.face_width(tp)).astype(bool)
        changed = np.any(out != target, axis=-1)
        assert changed.any() and not changed[~grown].any(), region
        # no holes: the swapped region is not darker than the darkest target pixel nearby
        assert out[grown].min() >= max(int(target[grown].min()) - 30, 0), region
    blended = swap.self_blend(target, tp, swap.SelfBlendParams.sample(rng))
    hull = swap.region_mask(tp, "face", target.shape[:2], 0.05 * swap.face_width(tp)).astype(bool)
    changed = np.any(blended != target, axis=-1)
    assert changed[hull].mean() > 0.5 and not changed[~hull].any()


@pytest.mark.slow
def test_same_seed_same_files_other_seed_differs(demo: Path, tmp_path: Path):
    methods = ["FaceSwapWarp", "SelfBlend"]
    again = build_demo_dataset(tmp_path / "again", seed=0, frames=FRAMES, methods=methods,
                               progress=False)
    other = build_demo_dataset(tmp_path / "other", seed=1, frames=FRAMES, methods=["SelfBlend"],
                               progress=False)
    for method in methods:
        for name in ("000_001", "009_008"):
            a = fake_video_path(demo, method, *name.split("_"))
            b = fake_video_path(again, method, *name.split("_"))
            assert np.array_equal(read_video_frames(a), read_video_frames(b)), (method, name)
            assert a.read_bytes() == b.read_bytes(), f"{method}/{name}: encoder not reproducible"
    a = read_video_frames(fake_video_path(demo, "SelfBlend", "000", "001"))
    c = read_video_frames(fake_video_path(other, "SelfBlend", "000", "001"))
    assert not np.array_equal(a, c)
    assert real_video_path(demo, "004").read_bytes() == real_video_path(other, "004").read_bytes()


def test_rerun_reuses_finished_files(demo: Path):
    files = sorted(demo.rglob("*.mp4"))
    stamps = [p.stat().st_mtime_ns for p in files]
    victim = fake_video_path(demo, "LipsSwap", "007", "006")
    before = victim.read_bytes()
    victim.unlink()
    build_demo_dataset(demo, seed=0, frames=FRAMES, methods=["LipsSwap"], progress=False)
    assert victim.read_bytes() == before
    assert [p.stat().st_mtime_ns for p in files if p != victim] == \
        [s for p, s in zip(files, stamps, strict=True) if p != victim]


def test_rerun_with_other_settings_is_refused(demo: Path):
    with pytest.raises(DemoDataError, match="seed"):
        build_demo_dataset(demo, seed=5, frames=FRAMES, progress=False)
    with pytest.raises(DemoDataError, match="unknown"):
        build_demo_dataset(demo, seed=0, frames=FRAMES, methods=["Deepfakes"], progress=False)


def test_cli_arguments_and_exit_codes(demo: Path, capsys):
    parser = add_demo_data_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--output", str(demo), "--frames", str(FRAMES),
                              "--methods", "SelfBlend", "EyesSwap", "--no-progress"])
    assert args.methods == ["SelfBlend", "EyesSwap"] and args.seed == 0
    assert run_demo_data_command(args) == 0
    assert "demo dataset ready" in capsys.readouterr().out
    bad = parser.parse_args(["--output", str(demo), "--seed", "3", "--no-progress"])
    assert run_demo_data_command(bad) == 1
    assert "--seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", str(demo), "--methods", "Deepfakes"])


def test_parameters_are_seeded_per_video():
    def draw(seed: int, t: int, s: int) -> swap.SelfBlendParams:
        return swap.SelfBlendParams.sample(
            np.random.default_rng([seed, zlib.crc32(b"SelfBlend"), t, s]))

    assert draw(0, 0, 1) == draw(0, 0, 1)
    assert draw(0, 0, 1) != draw(0, 1, 0) != draw(1, 0, 1)


def test_demo_index_reads_the_demo_set_unchanged(tmp_path):
    """The FF++ reader (as the `demo` index) lists every demo video with labels and splits."""
    from data_modules.indexes import build_index

    root = build_demo_dataset(tmp_path / "demo", frames=2, methods=["LipsSwap"], progress=False)
    records = build_index("demo", root, methods=["LipsSwap"])
    by_key = {r.key: r for r in records}
    assert len(records) == 10 + 10
    assert by_key["ffpp/c23/real/000"].label == 0 and by_key["ffpp/c23/real/000"].split == "train"
    assert by_key["ffpp/c23/LipsSwap/008_009"].label == 1
    assert by_key["ffpp/c23/LipsSwap/008_009"].split == "test"
