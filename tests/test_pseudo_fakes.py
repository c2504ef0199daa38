"""Self-blended pseudo-fakes: the blend itself, the data-source switch, sampling and domains."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data_modules import BalancedRealFakeSampler, DataError, DeepfakeDataModule, SourceSpec
from data_modules.datasets import select_videos
from data_modules.pseudo import (
    PSEUDO_METHODS,
    make_blend_swap,
    make_pseudo_fake,
    pseudo_fake_videos,
    pseudo_key,
)
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.tensors import to_tensor
from deepfakemae.records import FAKE, REAL
from deepfakemae.synth.swap import (
    SBI_MAX_DEFORM,
    SBI_MAX_GROW,
    SelfBlendParams,
    _jitter_colors,
    face_width,
    feathered_alpha,
    region_mask,
    self_blend,
    self_blend_alpha,
)
from tests.conftest import face_crop

PSEUDO_METHOD = PSEUDO_METHODS["self_blend"][0]


def _module(ffpp_cache, fake_source: str, **kw) -> DeepfakeDataModule:
    dm = DeepfakeDataModule(train=[SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train")],
                            img_size=64, augment=False, fake_source=fake_source, **kw)
    dm.setup("fit")
    return dm


def test_pseudo_fake_is_deterministic_for_a_seed(astronaut_face_session):
    crop, points = face_crop(astronaut_face_session, 128)
    crops, lms = np.stack([crop, crop[:, ::-1]]), np.stack([points, points])
    a, b = make_pseudo_fake(crops, lms, 7), make_pseudo_fake(crops, lms, 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, crops)
    draws = {make_pseudo_fake(crops[:1], lms[:1], s).tobytes() for s in range(4)}
    assert len(draws) == 4  # another seed, another blend


def test_pseudo_fake_changes_pixels_only_inside_the_face_hull(astronaut_face_session):
    crop, points = face_crop(astronaut_face_session, 128)
    fw = face_width(points)
    bound = region_mask(points, "face", crop.shape[:2],
                        (np.sqrt(2) * SBI_MAX_DEFORM + SBI_MAX_GROW) * fw + 2).astype(bool)
    inner = region_mask(points, "face", crop.shape[:2], -0.1 * fw).astype(bool)
    for seed in range(20):
        params = SelfBlendParams.sample_sbi(np.random.default_rng(seed))
        alpha = self_blend_alpha(points, crop.shape[:2], params)
        assert alpha.max() <= params.opacity + 1e-6 and alpha.min() >= 0.0
        assert not alpha[~bound].any(), f"seed {seed}: mask leaves the face hull"
        assert alpha[inner].mean() > 0.5 * params.opacity, f"seed {seed}: the face is not blended"
        changed = np.abs(self_blend(crop, points, params).astype(int) - crop).max(-1) > 0
        assert not changed[~bound].any()


def test_default_self_blend_params_keep_the_demo_blend(astronaut_face_session):
    """The new SBI fields default to no change: the demo set's ``SelfBlendEasy`` is as before."""
    crop, points = face_crop(astronaut_face_session, 96)
    params = SelfBlendParams.sample(np.random.default_rng(3))
    assert (params.deform, params.mask_blur, params.downscale, params.sharpen) == (0, 0, 1, 0)
    mask = region_mask(points, "face", crop.shape[:2], params.grow * face_width(points))
    expected = feathered_alpha(mask, params.feather * face_width(points)) * params.opacity
    assert np.array_equal(self_blend_alpha(points, crop.shape[:2], params), expected)


def test_colour_jitter_lookup_tables_match_the_per_pixel_formula(astronaut_face_session):
    """``_jitter_colors`` runs as lookup tables; it must equal the formula pixel by pixel."""
    crop, _ = face_crop(astronaut_face_session, 96)
    for seed in range(5):
        params = SelfBlendParams.sample_sbi(np.random.default_rng(seed))
        hsv = cv2.cvtColor(crop, cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = np.mod(hsv[..., 0] + params.hue, 180.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * params.saturation, 0, 255)
        rgb = cv2.cvtColor(np.clip(hsv + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB)
        out = (rgb.astype(np.float32) - 128.0) * params.contrast + 128.0 + params.brightness
        expected = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        assert np.array_equal(_jitter_colors(crop, params), expected)


@pytest.mark.parametrize("source, n_real, n_fake, methods", [
    ("dataset", 4, 4, {"Deepfakes", "FaceSwap"}),
    ("pseudo", 4, 4, {PSEUDO_METHOD}),
    ("both", 4, 8, {"Deepfakes", "FaceSwap", PSEUDO_METHOD}),
])
def test_fake_source_switch(ffpp_cache, source, n_real, n_fake, methods):
    dm = _module(ffpp_cache, source)
    videos = dm.train_dataset.videos
    assert sum(v.label == REAL for v in videos) == n_real
    assert sum(v.label == FAKE for v in videos) == n_fake
    assert {v.method for v in videos if v.label == FAKE} == methods
    assert set(dm.domain_map) == {"real", *methods}
    if source != "dataset":
        twins = [v for v in videos if v.method == PSEUDO_METHOD]
        reals = {v.key for v in videos if v.label == REAL}
        assert {v.pseudo_of for v in twins} == reals  # one twin per real video, never of a fake
        assert all(v.key == pseudo_key(v.pseudo_of) for v in twins)


def test_pseudo_fake_samples_have_label_domain_and_blended_real_pixels(ffpp_cache):
    dm = _module(ffpp_cache, "both")
    ds, cache = dm.train_dataset, FaceCache(str(ffpp_cache))
    for index in range(len(ds)):
        video = ds.videos[int(ds.video_of[index])]
        pos = int(ds.positions[index][0])
        torch.manual_seed(index)
        sample = ds[index]
        torch.manual_seed(index)
        assert torch.equal(sample["image"], ds[index]["image"])  # reproducible per seed
        raw = cache.read(video.pseudo_of or video.key, frames=np.array([pos])).crops[0]
        unchanged = torch.allclose(sample["image"], to_tensor(raw[None])[0], atol=1e-6)
        assert sample["video_key"] == video.key
        if video.pseudo_of is not None:
            assert sample["label"].item() == FAKE
            assert sample["domain"].item() == dm.domain_map[PSEUDO_METHOD]
            assert not unchanged, f"{video.key} was not blended"
        else:
            assert unchanged, f"{video.key} ({video.method}) was changed"  # no blend on fakes


def test_pseudo_fake_clip_shares_one_blend_across_frames(ffpp_cache):
    dm = DeepfakeDataModule(train=[SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train")],
                            img_size=64, augment=False, fake_source="pseudo", mode="clip",
                            clip_len=3)
    dm.setup("fit")
    ds = dm.train_dataset
    index = next(i for i in range(len(ds)) if ds.videos[int(ds.video_of[i])].pseudo_of)
    video = ds.videos[int(ds.video_of[index])]
    entry = FaceCache(str(ffpp_cache)).read(video.pseudo_of, frames=ds.positions[index])
    torch.manual_seed(5)
    sample = ds[index]
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    expected = make_pseudo_fake(entry.crops, entry.landmarks.astype(np.float32), seed)
    assert torch.allclose(sample["image"], to_tensor(expected), atol=1e-6)
    assert not torch.equal(sample["image"], to_tensor(entry.crops))


def test_balanced_paired_sampler_pairs_each_pseudo_fake_with_its_real_frame(ffpp_cache):
    dm = _module(ffpp_cache, "pseudo", balanced=True, paired=True)
    ds = dm.train_dataset
    sampler = BalancedRealFakeSampler(ds, num_replicas=1, rank=0, seed=3, paired=True)
    order = np.asarray(list(sampler)).reshape(-1, 2)
    for a, b in order:
        va, vb = ds.videos[int(ds.video_of[a])], ds.videos[int(ds.video_of[b])]
        real, fake = (va, vb) if va.label == REAL else (vb, va)
        assert fake.pseudo_of == real.key
        pa, pb = ds.positions[a], ds.positions[b]
        assert np.array_equal(pa, pb)  # the same frame, real and self-blended


def test_fake_source_errors_name_the_switch(ffpp_cache):
    with pytest.raises(DataError, match="fake_source"):
        DeepfakeDataModule(fake_source="sbi")
    with pytest.raises(DataError, match="real_only"):
        DeepfakeDataModule(fake_source="pseudo", real_only=True)
    fakes_only = [v for v in select_videos(SourceSpec("x", str(ffpp_cache), "ffpp", "train"))
                  if v.label == FAKE]
    assert pseudo_fake_videos(fakes_only, "pseudo") == []  # fakes never get a twin
    with pytest.raises(DataError, match="fake_source='pseudo'"):
        DeepfakeDataModule(train=[SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train",
                                             methods=["Deepfakes"])],
                           fake_source="pseudo").setup("fit")


def test_pseudo_fake_loader_batches(ffpp_cache):
    dm = _module(ffpp_cache, "pseudo", balanced=True, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].tolist().count(FAKE) == 2
    fake_keys = [k for k, y in zip(batch["video_key"], batch["label"].tolist(), strict=True) if y == FAKE]
    assert len(fake_keys) == 2 and all(k.endswith("#sbi") for k in fake_keys)


def test_blend_swap_twins_sit_beside_self_blend_twins(ffpp_cache):
    dm = _module(ffpp_cache, "pseudo", pseudo_methods=["self_blend", "blend_swap"])
    videos = dm.train_dataset.videos
    reals = {v.key for v in videos if v.label == REAL}
    for method, (name, suffix) in PSEUDO_METHODS.items():
        twins = [v for v in videos if v.method == name]
        assert {v.pseudo_of for v in twins} == reals
        assert all(v.key == pseudo_key(v.pseudo_of, method) and v.key.endswith(suffix)
                   for v in twins)
    assert set(dm.domain_map) == {"real", "SelfBlendPseudo", "BlendSwapPseudo"}
    with pytest.raises(DataError, match="pseudo_methods"):
        DeepfakeDataModule(fake_source="both", pseudo_methods=["faceswap"])


def test_blend_swap_takes_its_region_from_another_real_video(ffpp_cache):
    dm = _module(ffpp_cache, "pseudo", pseudo_methods=["blend_swap"], mode="clip", clip_len=2)
    ds, cache = dm.train_dataset, FaceCache(str(ffpp_cache))
    index = next(i for i in range(len(ds)) if ds.videos[int(ds.video_of[i])].pseudo_of)
    video = ds.videos[int(ds.video_of[index])]
    own = cache.read(video.pseudo_of, frames=ds.positions[index])
    torch.manual_seed(11)
    sample = ds[index]
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    donor_crops, donor_lms = ds._donor_clip(video.pseudo_of, 2, seed)
    donor_keys = {ds.videos[i].key for i in ds.donors}
    assert video.pseudo_of in donor_keys and len(donor_keys) >= 2
    expected = make_blend_swap(own.crops, own.landmarks.astype(np.float32), donor_crops,
                               donor_lms, seed)
    assert torch.allclose(sample["image"], to_tensor(expected), atol=1e-6)
    assert not torch.equal(sample["image"], to_tensor(own.crops))
    assert sample["label"].item() == FAKE


def test_blend_swap_changes_only_the_chosen_region(astronaut_face_session):
    crop, points = face_crop(astronaut_face_session, 128)
    donor = np.ascontiguousarray(crop[:, ::-1] // 2)  # darker, mirrored: another "face"
    flipped = points.copy()
    flipped[:, 0] = 127 - flipped[:, 0]
    a = make_blend_swap(crop[None], points[None], donor[None], flipped[None], 3)
    assert np.array_equal(a, make_blend_swap(crop[None], points[None], donor[None],
                                             flipped[None], 3))
    changed = np.abs(a[0].astype(int) - crop).max(-1) > 0
    hull = region_mask(points, "face", crop.shape[:2], 0.1 * face_width(points)).astype(bool)
    assert changed.any() and not changed[~hull].any()


def test_blend_swap_with_a_single_real_video_names_the_switch(make_face_cache, tmp_path):
    vids = [{"key": f"other/{m}/v0", "label": int(m != "real"), "dataset": "other", "method": m,
             "split": "train", "frames": 3} for m in ("real", "Swap")]
    root = make_face_cache(tmp_path / "cache", vids)
    dm = DeepfakeDataModule(train=[SourceSpec("one", str(root))], img_size=64, augment=False,
                            fake_source="both", pseudo_methods=["blend_swap"])
    with pytest.raises(DataError, match="at least two real training videos.*pseudo_methods"):
        dm.setup("fit")
