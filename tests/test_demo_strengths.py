"""Graded artifacts of the demo set: strength 0 is today's method bit for bit, each knob changes
only the manipulated region and moves its statistic the expected way, strengths are recorded
per video and the index and the domain map group by them."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_modules.datasets import build_domain_map
from data_modules.indexes import build_index
from data_modules.indexes.ffpp import group_by_strength, key_split, parse_methods, target_real_key
from deepfakemae.commands.demo_data import add_demo_data_arguments
from deepfakemae.synth import swap
from deepfakemae.synth.demo_data import (
    CACHE_DIR,
    METHODS,
    DemoDataError,
    build_demo_dataset,
    fake_rng,
    fake_video_path,
    grid_clip_paths,
    read_video_frames,
    real_video_path,
    video_encoder,
)
from deepfakemae.synth.methods import (
    DEMO_METHODS,
    DEMO_STRENGTHS,
    split_strength,
    strength_method,
    strength_methods,
)
from deepfakemae.synth.strengths import LEVELS, Artifacts, self_blend_at, swap_at

FRAMES = 4
#: two GRID speakers whose skin tones differ (so unmatched colour is measurable); ids 000, 001
CLIPS = ("lrwp9a.mpg", "lwbsza.mpg")
#: sha256 of the raw fake frames (4, 288, 360, 3) and of the mp4 file of ``<method>/000_001``,
#: made by the code before artifact strengths existed (commit 763a2ad) from CLIPS, seed 0, 4
#: frames. A change of OpenCV / NumPy / dlib (raw) or PyAV's x264 (mp4) may change them too.
TODAY = {
    "FaceSwapWarp": ("c812c984de6a1a39dc0f1833e00e50c77bca183637a502e2ecca1afde5c736be",
                     "43e7b4057bd92e446591e6bb99acc3deccff8a33c26fbe587c5a59df5cdad0e3"),
    "LipsSwap": ("c4c3c5e9873bc0c06c26f9925bba3d757d47e316da6caba703cc5069b9940c06",
                 "126b60ea8ac8150dbad96464ca806c32ef083071e34574fd16f6a2c3136779ac"),
    "EyesSwap": ("ed9c3858904c1a81a11357bebd8bd7ed4efb545e0ae0de8aea8c55cc8cdf146e",
                 "cf7d44b85cea352f65a42aba6a50bf521ec8a62a40f6c9e05420d273b6505d62"),
    "SelfBlend": ("5be919542f146e63a5f5e9f381a4a44d9c65a3ee0205b9891c64fb1914223f8b",
                  "625ef43c0917e847491592f77ac60c78e8adc25a5663809730d3012d860fd621"),
}


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    bundled = {p.name: p for p in grid_clip_paths()}
    for name in CLIPS:
        (folder / name).symlink_to(bundled[name])
    return folder


@pytest.fixture(scope="module")
def graded(tmp_path_factory, clips_dir: Path) -> Path:
    """One pair (both directions), every method at every strength, FRAMES frames."""
    return build_demo_dataset(tmp_path_factory.mktemp("graded") / "ffpp", frames=FRAMES,
                              strengths=DEMO_STRENGTHS, progress=False, clips_dir=clips_dir)


@pytest.fixture(scope="module")
def pair(graded: Path, clips_dir: Path) -> dict:
    """Target (000) and source (001) clips (T,H,W,3) with their cached landmarks (T,68,2)."""
    out = {}
    for vid, clip in zip(("000", "001"), grid_clip_paths(clips_dir), strict=True):
        with np.load(graded / CACHE_DIR / "landmarks" / f"{clip.stem}.npz") as data:
            out[vid] = (read_video_frames(clip, FRAMES), data["landmarks"])
    return out


def test_names_levels_and_parsing():
    assert strength_method("FaceSwapWarp", 0) == "FaceSwapWarp"
    assert strength_method("FaceSwapWarp", 3) == "FaceSwapWarp@s3"
    assert split_strength("FaceSwapWarp@s3") == ("FaceSwapWarp", 3)
    assert split_strength("Deepfakes") == ("Deepfakes", 0) and split_strength("real") == ("real", 0)
    for bad in ("FaceSwapWarp@s0", "FaceSwapWarp@s9", "Deepfakes@s1", "LipsSwap@sx"):
        with pytest.raises(ValueError, match="demo method"):
            split_strength(bad)
    with pytest.raises(ValueError, match="strength"):
        strength_method("LipsSwap", 4)
    assert strength_methods(["LipsSwap"], [0, 3]) == ["LipsSwap", "LipsSwap@s3"]
    assert tuple(LEVELS) == DEMO_STRENGTHS and LEVELS[0] == Artifacts()
    for knob in ("render_scale", "feather_scale", "color_match"):  # monotone: more artifact
        values = [getattr(LEVELS[k], knob) for k in DEMO_STRENGTHS]
        assert values == sorted(values, reverse=True) and len(set(values)) == len(values), knob
    assert LEVELS[3].feather_scale == 0.0 and LEVELS[3].color_match == 0.0
    with pytest.raises(ValueError, match="render_scale"):
        Artifacts(render_scale=0.0)


def test_strength_zero_is_todays_method_bit_for_bit(graded: Path, pair: dict):
    target, source = pair["000"], pair["001"]
    for method, (raw_sha, mp4_sha) in TODAY.items():
        fake = METHODS[method].make(*target, *source, fake_rng(0, method, "000", "001"), 0)
        assert hashlib.sha256(fake.tobytes()).hexdigest() == raw_sha, method
        if video_encoder() == "h264":  # written beside three other strengths, same file as today
            data = fake_video_path(graded, method, "000", "001").read_bytes()
            assert hashlib.sha256(data).hexdigest() == mp4_sha, method


def test_every_strength_is_made_from_the_same_frames_and_draw(graded: Path, pair: dict):
    """Strength k of a pair is strength 0's fake with the level's knobs: same drawn grow,
    region and geometry; decoded videos have the same length and the same pixels outside."""
    sources = json.loads((graded / "demo_sources.json").read_text())
    assert sources["strengths"] == list(DEMO_STRENGTHS)
    assert sources["methods"] == strength_methods(DEMO_METHODS, DEMO_STRENGTHS)
    assert {k: Artifacts(**v) for k, v in sources["artifact_levels"].items()} == \
        {str(k): v for k, v in LEVELS.items()}
    assert len(sources["fakes"]) == 2 * len(DEMO_METHODS) * len(DEMO_STRENGTHS)
    real = read_video_frames(real_video_path(graded, "000")).astype(np.int16)  # decoded
    for method in DEMO_METHODS:
        base = sources["fakes"][f"{method}/000_001"]
        for k in DEMO_STRENGTHS[1:]:
            entry = sources["fakes"][f"{method}@s{k}/000_001"]
            assert (entry["method"], entry["strength"], entry["split"]) == (method, k, "train")
            assert entry["params"]["grow"] == base["params"]["grow"]
            assert entry["params"]["feather"] == pytest.approx(
                base["params"]["feather"] * LEVELS[k].feather_scale)
            frames = read_video_frames(fake_video_path(graded, f"{method}@s{k}", "000", "001"))
            assert frames.shape == (FRAMES, *real.shape[1:])
            far = ~swap.region_mask(pair["000"][1][0], "face", real.shape[1:3],
                                    0.15 * swap.face_width(pair["000"][1][0])).astype(bool)
            assert np.abs(frames[0].astype(np.int16) - real[0])[far].mean() < 1.5, (method, k)


# ----------------------------------------------------------------------------- one knob at a time

def _fake(method: str, pair: dict, artifacts: Artifacts, frame: int):
    """(fake frame, params) of ``method`` on pair 000 <- 001 with only ``artifacts`` applied."""
    (tf, tp), (sf, sp) = pair["000"], pair["001"]
    rng = fake_rng(0, method, "000", "001")
    if METHODS[method].region is None:
        params = self_blend_at(swap.SelfBlendParams.sample(rng), artifacts)
        return swap.self_blend(tf[frame], tp[frame], params), params
    params = swap_at(swap.SwapParams.sample(METHODS[method].region, rng), artifacts)
    return swap.swap_region(tf[frame], tp[frame], sf[frame], sp[frame], params), params


def _regions(points: np.ndarray, params, shape: tuple[int, int]):
    """(region (H,W) bool: where the fake may differ, core: skin inside it, band: its edge)."""
    fw = swap.face_width(points)
    region = getattr(params, "region", "face")
    mask = swap.region_mask(points, region, shape, params.grow * fw)
    kernel = np.ones((5, 5), np.uint8)
    core = cv2.erode(mask, kernel).astype(bool)
    core &= swap.region_mask(points, "face", shape, -0.05 * fw).astype(bool)
    core &= ~swap.region_mask(points, "inner_mouth", shape, 0.03 * fw).astype(bool)
    core &= ~swap.region_mask(points, "eyeballs", shape, 0.03 * fw).astype(bool)
    band = (cv2.dilate(mask, kernel) - cv2.erode(mask, kernel)).astype(bool)
    allowed = swap.region_mask(points, region, shape, max(params.grow, 0.0) * fw).astype(bool)
    return allowed, core, band


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def high_frequency(fake, real, core, band) -> float:
    """Mean |Laplacian| of the fake inside the region: detail."""
    return float(np.abs(cv2.Laplacian(_gray(fake), cv2.CV_32F))[core].mean())


def seam(fake, real, core, band) -> float:
    """Mean gradient magnitude of (fake - real) on the region's edge: a blend boundary."""
    diff = _gray(fake) - _gray(real)
    grad = np.hypot(cv2.Sobel(diff, cv2.CV_32F, 1, 0), cv2.Sobel(diff, cv2.CV_32F, 0, 1))
    return float(grad[band].mean())


def colour_distance(fake, real, core, band) -> float:
    """Distance of the mean LAB colour of the region's skin, fake to real target."""
    lab = [cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32)[core].mean(0) for x in (fake, real)]
    return float(np.linalg.norm(lab[0] - lab[1]))


KNOBS = {  # knob -> (values from no artifact to most, statistic that must rise along them)
    "render_scale": ((1.0, 0.5, 0.25), lambda *a: -high_frequency(*a)),
    "feather_scale": ((1.0, 0.5, 0.0), seam),
    "color_match": ((1.0, 0.5, 0.0), colour_distance),
}


@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("method", DEMO_METHODS)
def test_each_knob_changes_only_the_region_and_moves_its_statistic(pair: dict, method: str,
                                                                   knob: str):
    values, statistic = KNOBS[knob]
    real_frames, points = pair["000"]
    curve = []
    for value in values:
        scores = []
        for i in range(2):
            fake, params = _fake(method, pair, Artifacts(**{knob: value}), i)
            allowed, core, band = _regions(points[i], params, fake.shape[:2])
            changed = np.any(fake != real_frames[i], axis=-1)
            assert changed.any() and not changed[~allowed].any(), (method, knob, value)
            scores.append(statistic(fake, real_frames[i], core, band))
        curve.append(float(np.mean(scores)))
    assert curve == sorted(curve) and curve[-1] > curve[0] + 0.05 * abs(curve[0]), \
        f"{method}: {knob} {values} -> {curve}"


# ----------------------------------------------------------------------------- index, domains, CLI

def test_index_groups_by_strength_and_plain_filters_keep_strength_zero(graded: Path):
    records = build_index("demo", graded)  # default: every method demo_sources.json lists
    groups = group_by_strength(records)
    assert list(groups) == sorted(DEMO_METHODS)
    for method, by_strength in groups.items():
        assert list(by_strength) == list(DEMO_STRENGTHS)
        for k, fakes in by_strength.items():
            assert sorted(r.key for r in fakes) == [
                f"ffpp/c23/{strength_method(method, k)}/{stem}" for stem in ("000_001", "001_000")]
            assert all(r.label == 1 and r.split == "train" for r in fakes)
    key = "ffpp/c23/FaceSwapWarp@s3/001_000"
    assert target_real_key(key) == "ffpp/c23/real/001"
    assert key_split(key, {"000": "test", "001": "test"}) == "test"
    plain = build_index("demo", graded, methods=["FaceSwapWarp"])
    assert {r.method for r in plain} == {"real", "FaceSwapWarp"}
    chosen = build_index("demo", graded, methods="FaceSwapWarp@s3,SelfBlend@s1")
    assert {r.method for r in chosen} == {"real", "FaceSwapWarp@s3", "SelfBlend@s1"}
    assert parse_methods(["Deepfakes", "LipsSwap@s2"]) == ("Deepfakes", "LipsSwap@s2")
    for bad in ("Deepfakes@s1", "LipsSwap@s7"):
        with pytest.raises(ValueError, match="artifact strength"):
            parse_methods([bad])


def test_strengths_share_their_methods_domain_unless_listed():
    train = ["real", "LipsSwap@s1", "FaceSwapWarp", "FaceSwapWarp@s3"]
    assert build_domain_map(train) == {"real": 0, "FaceSwapWarp": 1, "LipsSwap": 2,
                                       "LipsSwap@s1": 2, "FaceSwapWarp@s3": 1}
    own = build_domain_map(train, ["FaceSwapWarp", "FaceSwapWarp@s3", "LipsSwap"])
    assert own["FaceSwapWarp@s3"] == 2 and own["LipsSwap@s1"] == own["LipsSwap"] == 3


def test_strength_option_and_rerun_checks(graded: Path, clips_dir: Path):
    parser = add_demo_data_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--output", "x"]).strengths == [0]
    assert parser.parse_args(["--output", "x", "--strengths", "3", "0"]).strengths == [3, 0]
    with pytest.raises(SystemExit):
        parser.parse_args(["--output", "x", "--strengths", "4"])
    with pytest.raises(DemoDataError, match="strengths"):
        build_demo_dataset(graded, frames=FRAMES, strengths=[5], clips_dir=clips_dir,
                           progress=False)
    path = graded / "demo_sources.json"
    before = path.read_text()
    build_demo_dataset(graded, frames=FRAMES, methods=["LipsSwap"], clips_dir=clips_dir,
                       progress=False)  # a rerun with fewer strengths keeps the record
    assert json.loads(path.read_text()) == json.loads(before)
    changed = json.loads(before)
    changed["artifact_levels"]["3"]["render_scale"] = 0.5
    path.write_text(json.dumps(changed))
    try:
        with pytest.raises(DemoDataError, match="artifact strength levels"):
            build_demo_dataset(graded, frames=FRAMES, clips_dir=clips_dir, progress=False)
    finally:
        path.write_text(before)
