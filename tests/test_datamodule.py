"""DeepfakeDataModule over tiny face caches: batch contract, sampling, augmentation, errors."""

from __future__ import annotations

import warnings
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler

from data_modules import (
    BalancedRealFakeSampler,
    DataError,
    DeepfakeDataModule,
    FaceAugment,
    FaceClipDataset,
    SourceSpec,
    VideoEpochSampler,
    build_domain_map,
    build_train_transform,
    select_videos,
)
from deepfakemae.constants import IMAGENET_MEAN, IMAGENET_STD
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.ibug68 import FLIP_PERMUTATION
from deepfakemae.faces.tensors import window_positions

KEYS = {"image", "landmarks", "label", "domain", "video_key", "frame_index"}


def _specs(ffpp_cache, celebdf_cache):
    root = str(ffpp_cache)
    return dict(
        train=[SourceSpec("ffpp", root, "ffpp", "train")],
        val=[SourceSpec("ffpp_val", root, "ffpp", "val")],
        test=[SourceSpec("ffpp", root, "ffpp", "test"),
              SourceSpec("celebdf", str(celebdf_cache), "celebdf", "test")],
    )


def _dm(ffpp_cache, celebdf_cache, **kw) -> DeepfakeDataModule:
    args = dict(_specs(ffpp_cache, celebdf_cache), img_size=64, batch_size=4, seed=3)
    args.update(kw)
    return DeepfakeDataModule(**args)


def _unnormalise(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return image * std + mean


# -- batch contract ---------------------------------------------------------------------------
def test_frame_mode_train_batch_contract(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.sampler) == 8  # an epoch = each of the 8 training videos once
    batch = next(iter(loader))
    assert set(batch) == KEYS
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["landmarks"].shape == (4, 68, 2) and batch["landmarks"].dtype == torch.float32
    for key in ("label", "domain", "frame_index"):
        assert batch[key].shape == (4,) and batch[key].dtype == torch.long
    assert len(batch["video_key"]) == 4 and all(isinstance(k, str) for k in batch["video_key"])
    pixels = _unnormalise(batch["image"][0])
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4 and pixels.std() > 0.05
    # dlib landmarks of a centred face stay inside the 64 px crop (mild augmentation)
    assert batch["landmarks"][..., 0].mean() == pytest.approx(32, abs=8)


def test_eval_frames_cover_every_cached_frame_per_test_set(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, batch_size=64)
    dm.setup("test")
    assert dm.test_set_names == ["ffpp", "celebdf"]
    loaders = dm.test_dataloader()
    assert len(loaders) == 2
    ffpp = next(iter(loaders[0]))
    assert set(ffpp) == KEYS | {"test_set"} and set(ffpp["test_set"]) == {"ffpp"}
    assert len(ffpp["video_key"]) == 5 + 3 + 7 + 2
    assert ffpp["label"].tolist().count(0) == 8
    celeb = next(iter(loaders[1]))
    assert celeb["image"].shape == (3 + 4 + 3 + 4 + 5, 3, 64, 64)  # 96 px cache resized to 64
    # landmarks rescaled with the crop: compare against the cache's 96 px landmarks
    key = celeb["video_key"][0]
    raw = FaceCache(celebdf_cache).read(key, frames=[0])
    np.testing.assert_allclose(celeb["landmarks"][0].numpy(),
                               (raw.landmarks[0] + 0.5) * (64 / 96) - 0.5, atol=1e-4)
    assert celeb["frame_index"][:3].tolist() == [0, 7, 14]
    assert set(celeb["domain"].tolist()) == {0, -1}  # Celeb-synthesis is an unseen domain
    # no augmentation at evaluation: identical across two passes
    again = next(iter(dm.test_dataloader()[1]))
    assert torch.equal(again["image"], celeb["image"])


def test_clip_mode_shapes_and_short_video_padding(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, mode="clip", batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 5, 3, 64, 64)
    assert batch["landmarks"].shape == (2, 5, 68, 2)
    assert batch["frame_index"].shape == (2, 5) and batch["label"].shape == (2,)
    # consecutive cached frames (step 7 in the fixture) unless padded
    steps = batch["frame_index"].diff(dim=1)
    assert bool(((steps == 7) | (steps == 0)).all())
    # the 3-frame video: one window padded by repeating its last frame
    ds = dm.train_dataset
    short = next(i for i, v in enumerate(ds.videos) if v.num_frames == 3)
    lo, hi = ds.sample_ranges[short]
    assert hi - lo == 1
    sample = ds[int(lo)]
    assert sample["frame_index"].tolist() == [0, 7, 14, 14, 14]
    assert torch.equal(sample["landmarks"][3], sample["landmarks"][4])


def test_clip_eval_windows_tile_each_video():
    assert [w.tolist() for w in window_positions(7, 5, "tile")] == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]]
    assert [w.tolist() for w in window_positions(10, 5, "tile")] == [list(range(5)), list(range(5, 10))]
    assert [w.tolist() for w in window_positions(2, 5, "tile")] == [[0, 1, 1, 1, 1]]
    assert len(window_positions(7, 5, "all")) == 3


def test_clip_eval_loader(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, mode="frame", eval_mode="clip", batch_size=16)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    # test videos with 5, 3, 7, 2 frames -> 1 + 1 + 2 + 1 windows
    assert batch["image"].shape == (5, 5, 3, 64, 64)
    covered = {(k, int(f)) for k, fi in zip(batch["video_key"], batch["frame_index"], strict=True) for f in fi}
    assert len(covered) == 5 + 3 + 7 + 2


def test_real_only_and_domain_ids(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, real_only=True, batch_size=8)
    dm.setup("fit")
    assert len(dm.train_dataset.videos) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].tolist() == [0] * 4 and batch["domain"].tolist() == [0] * 4

    dm = _dm(ffpp_cache, celebdf_cache, augment=False)
    dm.setup("fit")
    assert dm.domain_map == {"real": 0, "Deepfakes": 1, "FaceSwap": 2}
    ds = dm.train_dataset
    for i in range(len(ds)):
        video = ds.videos[int(ds.video_of[i])]
        assert int(ds[i]["domain"]) == dm.domain_map[video.method]

    dm = _dm(ffpp_cache, celebdf_cache, domains=["FaceSwap", "Deepfakes"])
    dm.setup("test")
    assert dm.domain_map == {"real": 0, "FaceSwap": 1, "Deepfakes": 2}
    with pytest.raises(DataError, match=r"\['FaceSwap'\] are missing from `domains`"):
        build_domain_map(["real", "Deepfakes", "FaceSwap"], ["Deepfakes"])


# -- samplers ---------------------------------------------------------------------------------
def _train_dataset(ffpp_cache, clip_len=1) -> FaceClipDataset:
    videos = select_videos(SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train"))
    return FaceClipDataset(videos, build_domain_map([v.method for v in videos]), 64,
                           clip_len=clip_len, windows="all")


def test_video_epoch_sampler_each_video_once_and_deterministic(ffpp_cache):
    ds = _train_dataset(ffpp_cache)
    s = VideoEpochSampler(ds, seed=1)
    assert isinstance(s, DistributedSampler)  # Lightning keeps it under DDP
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(ds.video_of[e0].tolist()) == list(range(8))
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    ranks = [list(VideoEpochSampler(ds, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # 8 videos padded to 9
    assert set(ds.video_of[sum(ranks, [])].tolist()) == set(range(8))


def test_balanced_sampler_proportions_determinism_and_ddp(ffpp_cache):
    ds = _train_dataset(ffpp_cache)
    labels = ds.labels
    s = BalancedRealFakeSampler(ds, seed=5)
    assert isinstance(s, DistributedSampler) and len(s) == 8  # 2 x 4 real videos
    s.set_epoch(0)
    e0 = list(s)
    videos = ds.video_of[e0]
    assert (labels[videos] == 0).sum() == 4 and (labels[videos] == 1).sum() == 4
    real_videos = set(np.flatnonzero(labels == 0).tolist())
    assert sorted(v for v in videos.tolist() if labels[v] == 0) == sorted(real_videos)  # once each
    # adjacent pairs are (real, fake) in some order: even batches are exactly balanced
    assert all(labels[videos[i]] != labels[videos[i + 1]] for i in range(0, 8, 2))
    methods = Counter(ds.videos[v].method for v in videos.tolist() if labels[v] == 1)
    assert methods == {"Deepfakes": 2, "FaceSwap": 2}
    assert list(s) == e0
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != e0 and (labels[ds.video_of[e1]] == 0).sum() == 4
    # two ranks: equal length, each balanced, all reals covered
    parts = [list(BalancedRealFakeSampler(ds, num_replicas=2, rank=r, seed=5)) for r in range(2)]
    assert [len(p) for p in parts] == [4, 4]
    for p in parts:
        assert (labels[ds.video_of[p]] == 0).sum() == 2
    reals = {int(v) for p in parts for v in ds.video_of[p] if labels[v] == 0}
    assert reals == real_videos
    # odd pair count over 3 ranks: padded, still equal and balanced per rank
    parts = [list(BalancedRealFakeSampler(ds, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert all((labels[ds.video_of[p]] == 0).sum() == 2 for p in parts)


def test_balanced_datamodule_loader_is_balanced(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, balanced=True, augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedRealFakeSampler)
    labels = torch.cat([b["label"] for b in loader])
    assert labels.tolist().count(0) == labels.tolist().count(1) == 4


# -- augmentation -----------------------------------------------------------------------------
def test_flip_permutation_is_a_mirror_involution():
    assert sorted(FLIP_PERMUTATION.tolist()) == list(range(68))
    np.testing.assert_array_equal(FLIP_PERMUTATION[FLIP_PERMUTATION], np.arange(68))
    assert FLIP_PERMUTATION[36] == 45 and FLIP_PERMUTATION[39] == 42 and FLIP_PERMUTATION[0] == 16
    assert FLIP_PERMUTATION[30] == 30 and FLIP_PERMUTATION[48] == 54 and FLIP_PERMUTATION[62] == 62


def test_landmarks_follow_a_flip(astronaut_face_session):
    from conftest import face_crop

    crop, lms = face_crop(astronaut_face_session, 96)
    aug = FaceAugment(build_train_transform(flip_p=1.0, affine_p=0, color_p=0, jpeg_p=0,
                                            noise_p=0, blur_p=0))
    out, out_lms = aug(crop[None], lms[None], seed=0)
    np.testing.assert_array_equal(out[0], crop[:, ::-1])
    # coordinates mirrored (x -> W-1-x) and identities swapped (36 <-> 45, ...)
    np.testing.assert_allclose(out_lms[0, :, 0], 95 - lms[FLIP_PERMUTATION, 0], atol=1e-4)
    np.testing.assert_allclose(out_lms[0, :, 1], lms[FLIP_PERMUTATION, 1], atol=1e-4)
    # the subject's right eye (36-41) stays on the image's left of the left eye (42-47)
    for pts in (lms, out_lms[0]):
        assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
        assert pts[36, 0] < pts[39, 0]  # outer corner 36 is left of inner corner 39
    # and each flipped landmark lands on the same pixels as its mirrored source point
    for i in (36, 45, 30, 48):
        x, y = np.round(out_lms[0, i]).astype(int)
        sx, sy = np.round(lms[FLIP_PERMUTATION[i]]).astype(int)
        np.testing.assert_array_equal(out[0, y, x], crop[sy, 95 - x])
        assert 95 - x == sx


def test_full_augmentation_is_shared_across_clip_frames(astronaut_face_session):
    from conftest import face_crop

    crop, lms = face_crop(astronaut_face_session, 64)
    aug = FaceAugment(build_train_transform(flip_p=0.5, affine_p=1.0, color_p=1.0, jpeg_p=1.0,
                                            noise_p=1.0, blur_p=1.0))
    clip = np.stack([crop] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warns on outdated argument names
        out, out_lms = aug(clip, np.stack([lms] * 3), seed=11)
    assert out.shape == clip.shape and out.dtype == np.uint8 and out_lms.shape == (3, 68, 2)
    assert not np.array_equal(out[0], crop)
    np.testing.assert_array_equal(out[0], out[2])  # same parameters on every frame
    np.testing.assert_array_equal(out_lms[0], out_lms[2])
    other, _ = aug(clip[:1], lms[None], seed=12)
    assert not np.array_equal(other[0], out[0])


def test_resolution_jitter_softens_the_whole_crop_and_is_off_by_default(astronaut_face_session):
    from conftest import face_crop

    crop, lms = face_crop(astronaut_face_session, 96)
    none = {"flip_p": 0.0, "affine_p": 0.0, "color_p": 0.0, "jpeg_p": 0.0, "noise_p": 0.0,
            "blur_p": 0.0}

    def energy(img: np.ndarray) -> float:  # high-frequency energy: variance of the Laplacian
        g = img.astype(np.float64).mean(-1)
        return float((4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2]
                      - g[1:-1, 2:]).var())

    soft = FaceAugment(build_train_transform(**none, downscale_p=1.0, downscale_min=0.5))
    ratios = [energy(soft(crop[None], lms[None], seed=s)[0][0]) / energy(crop) for s in range(6)]
    assert max(ratios) < 1.0 and np.mean(ratios) < 0.8, ratios
    assert len({round(r, 4) for r in ratios}) > 1  # a random side in [0.5, 1], not one fixed
    # off by default, and the default ranges are the explicit 0.2: the same pixels as before
    full = {"flip_p": 0.5, "affine_p": 1.0, "color_p": 1.0, "jpeg_p": 1.0, "noise_p": 1.0,
            "blur_p": 1.0}
    a = FaceAugment(build_train_transform(**full))(crop[None], lms[None], seed=3)[0]
    b = FaceAugment(build_train_transform(**full, color_range=0.2, downscale_p=0.0))(
        crop[None], lms[None], seed=3)[0]
    np.testing.assert_array_equal(a, b)
    assert not any(type(t).__name__ == "Downscale" for t in build_train_transform())
    for bad in ({"color_range": 1.0}, {"downscale_min": 0.0}, {"grid_shuffle": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_train_transform(**bad)


def test_grid_shuffle_moves_whole_tiles_and_keeps_their_pixels(astronaut_face_session):
    from conftest import face_crop

    crop, lms = face_crop(astronaut_face_session, 96)
    none = {"flip_p": 0.0, "affine_p": 0.0, "color_p": 0.0, "jpeg_p": 0.0, "noise_p": 0.0,
            "blur_p": 0.0}
    out = FaceAugment(build_train_transform(**none, grid_shuffle_p=1.0, grid_shuffle=4))(
        crop[None], lms[None], seed=5)[0][0]
    tiles = lambda img: [img[i:i + 24, j:j + 24] for i in range(0, 96, 24)  # noqa: E731
                         for j in range(0, 96, 24)]
    before, after = tiles(crop), tiles(out)
    # every output tile is one input tile, each used once, and the order changed
    match = [next(k for k, t in enumerate(before) if np.array_equal(t, a)) for a in after]
    assert sorted(match) == list(range(16)) and match != list(range(16))
    assert not any(type(t).__name__ == "RandomGridShuffle" for t in build_train_transform())


def test_wider_colour_range_moves_brightness_further(astronaut_face_session):
    from conftest import face_crop

    crop, lms = face_crop(astronaut_face_session, 96)
    none = {"flip_p": 0.0, "affine_p": 0.0, "jpeg_p": 0.0, "noise_p": 0.0, "blur_p": 0.0}

    def spread(color_range: float) -> float:  # the largest change of mean brightness over seeds
        aug = FaceAugment(build_train_transform(**none, color_p=1.0, color_range=color_range))
        return max(abs(float(aug(crop[None], lms[None], seed=s)[0].mean()) - float(crop.mean()))
                   for s in range(24))

    narrow, wide = spread(0.2), spread(0.4)
    assert 0 < narrow < wide


def test_augment_mapping_sets_the_pipeline_probabilities(ffpp_cache, celebdf_cache):
    flip_only = {"flip_p": 1.0, "affine_p": 0.0, "color_p": 0.0, "jpeg_p": 0.0, "noise_p": 0.0,
                 "blur_p": 0.0}
    plain = _dm(ffpp_cache, celebdf_cache, augment=False)
    flipped = _dm(ffpp_cache, celebdf_cache, augment=flip_only)
    plain.setup("fit")
    flipped.setup("fit")
    a, b = plain.train_dataset[0]["image"], flipped.train_dataset[0]["image"]
    torch.testing.assert_close(b, a.flip(-1))  # a mirror image, nothing else
    with pytest.raises(DataError, match="unknown keys"):
        _dm(ffpp_cache, celebdf_cache, augment={"hue_p": 0.5})


# -- DDP evaluation ---------------------------------------------------------------------------
def test_ddp_eval_shards_cover_every_frame_once_after_dedup(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache)
    dm.setup("test")
    ds = dm.test_datasets[0]
    assert len(ds) == 17  # odd: DistributedSampler pads one repeated sample
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        for batch in DataLoader(ds, batch_size=4, sampler=sampler, num_workers=0):
            seen += list(zip(batch["video_key"], batch["frame_index"].tolist(), strict=True))
    assert len(seen) == 18
    unique = set(seen)
    expected = {(v.key, 7 * i) for v in ds.videos for i in range(v.num_frames)}
    assert unique == expected and len(unique) == 17


def test_dataloader_with_two_workers(ffpp_cache, celebdf_cache):
    dm = _dm(ffpp_cache, celebdf_cache, num_workers=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0]["image"].shape == (4, 3, 64, 64)
    keys = [k for b in batches for k in b["video_key"]]
    assert len(set(keys)) == 8


# -- errors -----------------------------------------------------------------------------------
def test_missing_cache_root_names_preprocess(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=r"no face cache at .*nope: run `deepfakemae preprocess "
                                        r"--dataset ffpp --root <ffpp download folder> --output .*nope`"):
        select_videos(SourceSpec("x", str(missing), "ffpp", "train"))


def test_empty_cache(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty .*lists no videos.*deepfakemae preprocess"):
        select_videos(SourceSpec("x", str(tmp_path / "empty"), "ffpp"))


def test_cache_without_usable_videos_lists_status_counts(tmp_path):
    cache = FaceCache(tmp_path)
    for i in range(3):
        cache.write_failure(f"ffpp/v{i}", "no_face", "no face", {"label": 0})
    cache.write_failure("ffpp/v9", "unreadable", "bad file", {"label": 0})
    cache.rebuild_manifest()
    with pytest.raises(DataError, match=r"no usable video \(statuses: no_face=3, unreadable=1"):
        select_videos(SourceSpec("x", str(tmp_path)))


def test_selection_errors_list_available_values(ffpp_cache, celebdf_cache):
    root = str(ffpp_cache)
    with pytest.raises(DataError, match=r"dataset='celebdf'; available: \['ffpp'\]"):
        select_videos(SourceSpec("x", root, "celebdf"))
    with pytest.raises(DataError, match=r"split='train'; available: \['test'\]"):
        select_videos(SourceSpec("x", str(celebdf_cache), "celebdf", "train"))
    with pytest.raises(DataError, match=r"split must be one of"):
        select_videos(SourceSpec("x", root, "ffpp", "training"))
    with pytest.raises(DataError, match=r"methods \['NeuralTextures'\] not found .*available: "
                                        r"\['Deepfakes', 'FaceSwap', 'real'\]"):
        select_videos(SourceSpec("x", root, "ffpp", "train", ["real", "NeuralTextures"]))
    vids = select_videos(SourceSpec("x", root, "ffpp", "test", ["real"]))
    assert [v.method for v in vids] == ["real", "real"]


def test_training_needs_both_classes(ffpp_cache, celebdf_cache):
    only_real = [SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train", ["real"])]
    dm = _dm(ffpp_cache, celebdf_cache, train=only_real)
    with pytest.raises(DataError, match="needs real and fake videos.*4 real and 0 fake"):
        dm.setup("fit")
    only_fake = [SourceSpec("ffpp", str(ffpp_cache), "ffpp", "train", ["Deepfakes"])]
    with pytest.raises(DataError, match="real_only=True but"):
        _dm(ffpp_cache, celebdf_cache, train=only_fake, real_only=True).setup("fit")
    with pytest.raises(DataError, match="balanced=True needs fake videos"):
        _dm(ffpp_cache, celebdf_cache, balanced=True, real_only=True)
    _dm(ffpp_cache, celebdf_cache, train=only_real, real_only=True).setup("fit")  # fine


def test_source_specs_from_yaml_with_jsonargparse(ffpp_cache, celebdf_cache):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(DeepfakeDataModule, "data")
    cfg = parser.parse_string(f"""
data:
  train:
    - {{name: ffpp, cache: {ffpp_cache}, dataset: ffpp, split: train, methods: [real, Deepfakes]}}
  test:
    - {{name: celebdf, cache: {celebdf_cache}, dataset: celebdf, split: test}}
  mode: clip
  img_size: 64
""")
    dm = parser.instantiate(cfg).data
    assert isinstance(dm.train_sources[0], SourceSpec)
    assert dm.train_sources[0].methods == ["real", "Deepfakes"] and dm.mode == "clip"
    dm.setup("test")
    assert dm.test_set_names == ["celebdf"] and dm.domain_map == {"real": 0, "Deepfakes": 1}


# -- Lightning --------------------------------------------------------------------------------
class TinyDetector(L.LightningModule):
    """Logistic regression on mean colour: enough to drive the loaders through a Trainer."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 1)
        self.eval_sets: list[tuple[int, str]] = []

    def training_step(self, batch, batch_idx):
        logit = self.head(batch["image"].mean(dim=(-1, -2))).squeeze(-1)  # (B,)
        return torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"].float())

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.eval_sets.append((dataloader_idx, batch["test_set"][0]))

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.eval_sets.append((dataloader_idx, batch["test_set"][0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test_with_named_eval_sets(ffpp_cache, celebdf_cache, tmp_path):
    dm = _dm(ffpp_cache, celebdf_cache, balanced=True, augment=False)
    model = TinyDetector()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning called set_epoch
    assert {name for _, name in model.eval_sets} == {"ffpp_val"}
    model.eval_sets.clear()
    trainer.test(model, datamodule=dm, verbose=False)
    assert sorted(set(model.eval_sets)) == [(0, "ffpp"), (1, "celebdf")]


def test_lightning_ddp_keeps_training_sampler_and_shards_eval(ffpp_cache, celebdf_cache):
    """Under DDP Lightning leaves the (DistributedSampler-based) training sampler alone and
    gives evaluation loaders a padded, unshuffled DistributedSampler; no processes start here."""
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)
    dm = _dm(ffpp_cache, celebdf_cache, balanced=True)
    dm.setup("fit")
    dm.setup("test")
    connector = trainer._data_connector
    train = dm.train_dataloader()
    assert connector._prepare_dataloader(train, shuffle=True, mode=RunningStage.TRAINING) is train
    test = dm.test_dataloader()[0]
    prepared = connector._prepare_dataloader(test, shuffle=False, mode=RunningStage.TESTING)
    assert isinstance(prepared.sampler, DistributedSampler)
    assert prepared.sampler.num_replicas == 2 and not prepared.sampler.shuffle


def test_frame_count_falls_back_to_the_entry(ffpp_cache):
    from data_modules.datasets import _num_frames

    cache = FaceCache(ffpp_cache)
    record = next(r for r in cache.manifest() if r["status"] == "ok")
    assert _num_frames(cache, {"key": record["key"]}) == record["num_faces"] > 0


def test_samples_per_video_repeats_each_video_per_epoch(ffpp_cache):
    from data_modules import DeepfakeDataModule, SourceSpec

    spec = SourceSpec(name="ffpp", cache=str(ffpp_cache), dataset="ffpp", split="train")
    plain = DeepfakeDataModule(train=[spec], img_size=64, augment=False, batch_size=2)
    plain.setup("fit")
    triple = DeepfakeDataModule(train=[spec], img_size=64, augment=False, batch_size=2,
                                samples_per_video=3)
    triple.setup("fit")
    ds = triple.train_dataset
    sampler = triple.train_sampler()
    assert len(sampler) == 3 * len(plain.train_sampler())
    videos = [ds[i]["video_key"] for i in sampler]
    assert all(videos.count(k) == 3 for k in set(videos))
    balanced = DeepfakeDataModule(train=[spec], img_size=64, augment=False, balanced=True,
                                  samples_per_video=2)
    balanced.setup("fit")
    labels = [int(balanced.train_dataset[i]["label"]) for i in balanced.train_sampler()]
    assert len(labels) == 2 * 2 * 4 and sum(labels) == len(labels) // 2  # 4 real videos
