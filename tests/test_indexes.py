"""Dataset indexes over tiny fixture trees in each dataset's real on-disk layout."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_modules.indexes import (
    INDEXES,
    DatasetError,
    DatasetWarning,
    build_index,
    index_options,
    list_indexes,
    load_split_pairs,
    pair_videos,
    records_for_dataset,
)
from data_modules.indexes.common import is_safe_relative, safe_join
from data_modules.indexes.wilddeepfake import extract_archive
from deepfakemae.records import FAKE, REAL

FOUR = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
CELEBDF_LIST = Path("/work/shared/reference/celebdf_v2_List_of_testing_videos.txt")


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_clip(path: Path, frames: int = 3) -> Path:
    """A real 3-frame 32x32 mp4 (indexes only list files; this checks they accept real ones)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    for i in range(frames):
        writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    return path


def assert_well_formed(records):
    keys = [r.key for r in records]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(r.label in (REAL, FAKE) for r in records)
    assert all((r.method == "real") == (r.label == REAL) for r in records)


# ---------------------------------------------------------------- common


@pytest.mark.parametrize("name", ["../x.mp4", "/etc/passwd", "a/../../b", "C:\\x.mp4",
                                  "..\\x.mp4", "", "a/../x"])
def test_unsafe_relative_paths_are_rejected(name, tmp_path):
    assert not is_safe_relative(name)
    with pytest.raises(DatasetError, match="not a relative path inside"):
        safe_join(tmp_path, name)


def test_safe_join_keeps_inside_paths(tmp_path):
    assert safe_join(tmp_path, "sub/x.mp4") == tmp_path / "sub" / "x.mp4"
    assert safe_join(tmp_path, "./x.mp4") == tmp_path / "x.mp4"


def test_registry_lists_the_four_datasets_and_the_demo():
    assert list_indexes() == ["celebdf", "demo", "dfdc", "ffpp", "wilddeepfake"]
    assert set(INDEXES) == set(list_indexes())
    assert "compression" in index_options("ffpp")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_index("nope", "/tmp")


# ---------------------------------------------------------------- FF++


def make_ffpp(root: Path, ids, pairs, comp="c23", methods=FOUR, frames_for=()):
    for vid in ids:
        if vid in frames_for:
            touch(root / f"original_sequences/youtube/{comp}/videos/{vid}/0001.png")
        else:
            touch(root / f"original_sequences/youtube/{comp}/videos/{vid}.mp4")
    for method in methods:
        folder = root / f"manipulated_sequences/{method}/{comp}/videos"
        folder.mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            for stem in pair_videos(tuple(pair))[1]:
                touch(folder / f"{stem}.mp4")


SMALL_SPLITS = {"train": [["000", "001"], ["002", "003"]], "val": [["004", "005"]],
                "test": [["006", "007"]]}


@pytest.fixture
def small_ffpp(tmp_path):
    splits = tmp_path / "splits"
    splits.mkdir()
    for name, pairs in SMALL_SPLITS.items():
        (splits / f"{name}.json").write_text(json.dumps(pairs))
    root = tmp_path / "FaceForensics++"
    pairs = [p for ps in SMALL_SPLITS.values() for p in ps]
    make_ffpp(root, [v for p in pairs for v in p], pairs)
    return root, splits


def test_official_split_sizes_and_disjointness():
    ids = {}
    for split, n in (("train", 360), ("val", 70), ("test", 70)):
        pairs = load_split_pairs(split)
        assert len(pairs) == n
        ids[split] = {v for p in pairs for v in p}
        assert len(ids[split]) == 2 * n
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert set().union(*ids.values()) == {f"{i:03d}" for i in range(1000)}


def test_pair_maps_to_both_reals_and_both_fakes():
    assert pair_videos(("071", "054")) == (["071", "054"], ["071_054", "054_071"])


def test_ffpp_train_split_owns_pair_reals_and_fakes(small_ffpp):
    root, splits = small_ffpp
    recs = build_index("ffpp", root, split="train", splits_dir=splits)
    assert_well_formed(recs)
    reals = sorted(r.key for r in recs if r.label == REAL)
    assert reals == [f"ffpp/c23/real/{v}" for v in ("000", "001", "002", "003")]
    for method in FOUR:
        fakes = sorted(r.key.rsplit("/", 1)[1] for r in recs if r.method == method)
        assert fakes == ["000_001", "001_000", "002_003", "003_002"]
    assert {r.split for r in recs} == {"train"} and {r.dataset for r in recs} == {"ffpp"}
    rec = next(r for r in recs if r.key == "ffpp/c23/Face2Face/001_000")
    assert rec.label == FAKE and rec.path == str(
        root / "manipulated_sequences/Face2Face/c23/videos/001_000.mp4")


def test_ffpp_all_splits_and_val(small_ffpp):
    root, splits = small_ffpp
    everything = build_index("ffpp", root, splits_dir=splits)
    assert len(everything) == 8 + 8 * 4
    val = build_index("ffpp", root, split="val", splits_dir=splits, methods=["Deepfakes"])
    assert [r.key for r in val] == ["ffpp/c23/Deepfakes/004_005", "ffpp/c23/Deepfakes/005_004",
                                    "ffpp/c23/real/004", "ffpp/c23/real/005"]


def test_ffpp_official_splits_full_tree(tmp_path):
    pairs = {s: load_split_pairs(s) for s in ("train", "val", "test")}
    allp = [p for ps in pairs.values() for p in ps]
    make_ffpp(tmp_path, [f"{i:03d}" for i in range(1000)], allp)
    for split, n_ids in (("train", 720), ("val", 140), ("test", 140)):
        recs = build_index("ffpp", tmp_path, split=split)
        assert sum(r.label == REAL for r in recs) == n_ids
        assert sum(r.label == FAKE for r in recs) == 4 * n_ids
    assert len(build_index("ffpp", tmp_path)) == 5000


def test_ffpp_missing_videos_one_error_or_warning(small_ffpp):
    root, splits = small_ffpp
    (root / "original_sequences/youtube/c23/videos/002.mp4").unlink()
    (root / "manipulated_sequences/FaceSwap/c23/videos/003_002.mp4").unlink()
    with pytest.raises(DatasetError) as err:
        build_index("ffpp", root, split="train", splits_dir=splits)
    msg = str(err.value)
    assert "2 FF++ videos" in msg and "youtube/c23/videos/002" in msg and "003_002" in msg
    assert "allow_missing" in msg
    with pytest.warns(DatasetWarning, match=r"2 FF\+\+ videos"):
        recs = build_index("ffpp", root, split="train", splits_dir=splits, allow_missing=True)
    assert len(recs) == 4 + 16 - 2


def test_ffpp_wrong_root_names_root_and_layout(small_ffpp, tmp_path):
    root, _ = small_ffpp
    with pytest.raises(DatasetError) as err:
        build_index("ffpp", tmp_path)  # the parent of the real root
    msg = str(err.value)
    assert str(tmp_path) in msg and "original_sequences" in msg and f"--root {root}" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        build_index("ffpp", tmp_path / "nowhere")


def test_ffpp_missing_compression_or_method_folder(small_ffpp):
    root, splits = small_ffpp
    with pytest.raises(DatasetError, match="youtube at c40 does not exist"):
        build_index("ffpp", root, compression="c40", splits_dir=splits)
    with pytest.raises(DatasetError, match="FaceShifter at c23"):
        build_index("ffpp", root, methods="Deepfakes,FaceShifter", splits_dir=splits)
    with pytest.raises(ValueError, match="unknown FF\\+\\+ method"):
        build_index("ffpp", root, methods=["DeepFake"], splits_dir=splits)
    with pytest.raises(ValueError, match="compression"):
        build_index("ffpp", root, compression="c32")


def test_ffpp_faceshifter_and_dfd(small_ffpp):
    root, splits = small_ffpp
    make_ffpp(root, [], [p for ps in SMALL_SPLITS.values() for p in ps], methods=("FaceShifter",))
    write_clip(root / "original_sequences/actors/c23/videos/01__kitchen_pan.mp4")
    touch(root / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__kitchen_pan__ABCD1234.mp4")
    methods = ["FaceShifter", "DeepFakeDetection"]
    test = build_index("ffpp", root, split="test", methods=methods, splits_dir=splits)
    assert_well_formed(test)
    assert [r.key for r in test] == [
        "ffpp/c23/DeepFakeDetection/01_02__kitchen_pan__ABCD1234",
        "ffpp/c23/FaceShifter/006_007", "ffpp/c23/FaceShifter/007_006",
        "ffpp/c23/actors/01__kitchen_pan", "ffpp/c23/real/006", "ffpp/c23/real/007"]
    train = build_index("ffpp", root, split="train", methods=methods, splits_dir=splits)
    assert not any("DeepFakeDetection" in r.key or "actors" in r.key for r in train)
    moved = build_index("ffpp", root, split="train", methods=methods, splits_dir=splits,
                        dfd_split="train")
    assert {r.split for r in moved if "actors" in r.key} == {"train"}


def test_ffpp_frame_folders_instead_of_videos(tmp_path):
    pairs = [p for ps in SMALL_SPLITS.values() for p in ps]
    make_ffpp(tmp_path, [v for p in pairs for v in p], pairs, frames_for={"000"})
    splits = tmp_path / "splits"
    splits.mkdir()
    for name, ps in SMALL_SPLITS.items():
        (splits / f"{name}.json").write_text(json.dumps(ps))
    recs = build_index("ffpp", tmp_path, split="train", splits_dir=splits)
    rec = next(r for r in recs if r.key == "ffpp/c23/real/000")
    assert Path(rec.path).is_dir() and rec.path.endswith("videos/000")


def test_ffpp_bad_split_files_are_named(small_ffpp):
    root, splits = small_ffpp
    (splits / "val.json").write_text('[["004", "005"],')
    with pytest.raises(DatasetError, match="val.json"):
        build_index("ffpp", root, splits_dir=splits)
    (splits / "val.json").write_text('[["004", "000"]]')
    with pytest.raises(DatasetError, match="000 is in both train and val"):
        build_index("ffpp", root, splits_dir=splits)
    (splits / "val.json").write_text('[["004"]]')
    with pytest.raises(DatasetError, match="not a pair"):
        build_index("ffpp", root, splits_dir=splits)


def test_records_for_dataset_drops_unset_cli_flags(small_ffpp):
    root, splits = small_ffpp
    recs = records_for_dataset("ffpp", root, split="test", compression=None,
                               methods="Deepfakes, NeuralTextures", splits_dir=splits)
    assert {r.method for r in recs} == {"real", "Deepfakes", "NeuralTextures"}
    with pytest.raises(ValueError, match="--compression"):
        records_for_dataset("celebdf", root, compression="c23")
    with pytest.raises(ValueError, match="split must be one of"):
        records_for_dataset("ffpp", root, split="dev")


# ---------------------------------------------------------------- Celeb-DF v2


@pytest.fixture
def celebdf_root(tmp_path):
    root = tmp_path / "Celeb-DF-v2"
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4", "YouTube-real/00000.mp4",
                "YouTube-real/00001.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
                "Celeb-synthesis/id0_id1_0001.mp4", "Celeb-synthesis/id1_id0_0000.mp4"):
        touch(root / rel)
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
        "1 Celeb-real/id0_0001.mp4\n0 Celeb-synthesis/id1_id0_0000.mp4\n")
    return root


def test_celebdf_inverts_list_labels(celebdf_root):
    test = build_index("celebdf", celebdf_root, split="test")
    assert_well_formed(test)
    labels = {r.key: r.label for r in test}
    assert labels == {"celebdf/YouTube-real/00000": REAL, "celebdf/Celeb-real/id0_0001": REAL,
                      "celebdf/Celeb-synthesis/id0_id1_0000": FAKE,
                      "celebdf/Celeb-synthesis/id1_id0_0000": FAKE}
    assert {r.method for r in test if r.label == FAKE} == {"celebdf_synthesis"}
    train = build_index("celebdf", celebdf_root, split="train")
    assert [r.key for r in train] == ["celebdf/Celeb-real/id0_0000",
                                      "celebdf/Celeb-synthesis/id0_id1_0001",
                                      "celebdf/YouTube-real/00001"]
    assert len(build_index("celebdf", celebdf_root)) == 7
    with pytest.raises(ValueError, match="no 'val' split"):
        build_index("celebdf", celebdf_root, split="val")


@pytest.mark.parametrize("bad", ["2 Celeb-real/id0_0000.mp4", "1", "1 ../etc/passwd",
                                 "1 Other/x.mp4", "1 Celeb-synthesis/id0_id1_0001.mp4"])
def test_celebdf_malformed_line_names_file_and_line(celebdf_root, bad):
    lst = celebdf_root / "List_of_testing_videos.txt"
    lst.write_text("1 YouTube-real/00000.mp4\n\n" + bad + "\n")
    with pytest.raises(DatasetError, match=f"{lst}:3"):
        build_index("celebdf", celebdf_root)


def test_celebdf_missing_listed_video_and_wrong_root(celebdf_root, tmp_path):
    (celebdf_root / "Celeb-real/id0_0001.mp4").unlink()
    with pytest.raises(DatasetError, match="1 Celeb-DF v2 test videos missing"):
        build_index("celebdf", celebdf_root, split="test")
    with pytest.warns(DatasetWarning):
        assert len(build_index("celebdf", celebdf_root, split="test", allow_missing=True)) == 3
    with pytest.raises(DatasetError, match=f"--root {celebdf_root}"):
        build_index("celebdf", tmp_path)


@pytest.mark.skipif(not CELEBDF_LIST.is_file(), reason="reference Celeb-DF list not available")
def test_celebdf_official_list_counts():
    from data_modules.indexes.celebdf import parse_test_list

    entries = parse_test_list(CELEBDF_LIST)
    assert len(entries) == 518
    assert sum(label == REAL for _, _, label in entries) == 178


# ---------------------------------------------------------------- WildDeepfake


def add_to_tar(tar: tarfile.TarFile, name: str, data: bytes = b"png", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def make_archive(path: Path, members: list[str], extra=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            add_to_tar(tar, name)
        if extra:
            extra(tar)
    return path


def test_wilddeepfake_extracted_sequences_any_depth(tmp_path):
    root = tmp_path / "deepfake_in_the_wild"
    touch(root / "real_train/1/real/10/0.png")
    touch(root / "real_train/1/real/10/1.png")
    touch(root / "real_train/2/real/11/0.jpg")
    touch(root / "fake_train/3/fake/7/0.png")
    touch(root / "real_test/4/real/5/0.png")
    touch(root / "fake_test/5/0.png")
    touch(root / "fake_test/5/notes.txt")
    recs = build_index("wilddeepfake", root)
    assert_well_formed(recs)
    assert [(r.key, r.label, r.split) for r in recs] == [
        ("wilddeepfake/fake_test/5", FAKE, "test"),
        ("wilddeepfake/fake_train/3/fake/7", FAKE, "train"),
        ("wilddeepfake/real_test/4/real/5", REAL, "test"),
        ("wilddeepfake/real_train/1/real/10", REAL, "train"),
        ("wilddeepfake/real_train/2/real/11", REAL, "train")]
    assert len(build_index("wilddeepfake", root, split="test")) == 2


def test_wilddeepfake_archives_need_extract_then_extract(tmp_path):
    root = tmp_path / "wdf"
    for d, kind in (("real_test", "real"), ("fake_test", "fake")):
        make_archive(root / d / "1.tar.gz", [f"{kind}/20/0.png", f"{kind}/20/1.png",
                                             f"{kind}/21/0.png"])
    with pytest.raises(DatasetError) as err:
        build_index("wilddeepfake", root, split="test")
    msg = str(err.value)
    assert "--dataset wilddeepfake" in msg and "--extract" in msg and "tar -xzf" in msg
    recs = records_for_dataset("wilddeepfake", root, split="test", extract=True)
    assert [r.key for r in recs] == ["wilddeepfake/fake_test/1/fake/20",
                                     "wilddeepfake/fake_test/1/fake/21",
                                     "wilddeepfake/real_test/1/real/20",
                                     "wilddeepfake/real_test/1/real/21"]
    assert (root / "real_test/1/real/20/1.png").read_bytes() == b"png"
    # idempotent: the extracted folder marks the archive done
    assert build_index("wilddeepfake", root, split="test", extract=True) == recs


def test_extract_archive_without_data_filter(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter")
    archive = make_archive(tmp_path / "3.tgz", ["fake/9/0.png", "fake/9/1.png"])
    assert extract_archive(archive) == tmp_path / "3"
    assert sorted(p.name for p in (tmp_path / "3/fake/9").iterdir()) == ["0.png", "1.png"]


@pytest.mark.parametrize("evil", [
    lambda tar: add_to_tar(tar, "../escaped.png"),
    lambda tar: add_to_tar(tar, "/tmp/absolute_escape.png"),
    lambda tar: add_to_tar(tar, "real/link", b"", type=tarfile.SYMTYPE, linkname="../../.."),
])
@pytest.mark.parametrize("legacy", [False, True])
def test_wilddeepfake_malicious_member_is_rejected(tmp_path, evil, legacy, monkeypatch):
    root = tmp_path / "wdf"
    archive = make_archive(root / "real_test/7.tar.gz", ["real/1/0.png"], extra=evil)
    touch(root / "fake_test/1/fake/1/0.png")
    if legacy:  # Pythons without tarfile.data_filter take the pre-check route
        monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(DatasetError, match="refusing to extract") as err:
        build_index("wilddeepfake", root, split="test", extract=True)
    assert str(archive) in str(err.value)
    assert not (root / "escaped.png").exists() and not (tmp_path / "escaped.png").exists()
    assert not Path("/tmp/absolute_escape.png").exists()
    assert not (root / "real_test/7").exists()
    assert not list((root / "real_test").glob(".*partial"))
    with pytest.raises(DatasetError, match="already exists"):
        (root / "real_test/7").mkdir()
        extract_archive(archive)


def test_wilddeepfake_wrong_root_and_missing_split(tmp_path):
    touch(tmp_path / "deepfake_in_the_wild/real_test/1/real/1/0.png")
    with pytest.raises(DatasetError, match="deepfake_in_the_wild"):
        build_index("wilddeepfake", tmp_path)
    with pytest.raises(DatasetError, match="fake_test"):
        build_index("wilddeepfake", tmp_path / "deepfake_in_the_wild", split="test")
    with pytest.warns(DatasetWarning, match="fake_test"):
        recs = build_index("wilddeepfake", tmp_path / "deepfake_in_the_wild", split="test",
                           allow_missing=True)
    assert [r.key for r in recs] == ["wilddeepfake/real_test/1/real/1"]


# ---------------------------------------------------------------- DFDC


def make_dfdc(root: Path) -> Path:
    for part, entries in (("dfdc_train_part_0", {"aaa.mp4": "REAL", "bbb.mp4": "FAKE"}),
                          ("dfdc_train_part_1", {"ccc.mp4": "FAKE"})):
        meta = {}
        for name, label in entries.items():
            touch(root / "train" / part / name)
            meta[name] = {"label": label, "split": "train",
                          "original": None if label == "REAL" else "aaa.mp4"}
        (root / "train" / part / "metadata.json").write_text(json.dumps(meta))
    test = root / "dfdc_test"
    write_clip(test / "videos" / "ttt.mp4")
    touch(test / "videos" / "uuu.mp4")
    touch(test / "vvv.mp4")
    (test / "labels.csv").write_text("filename,label\nttt.mp4,1\nuuu.mp4,0\nvvv.mp4,0\n")
    return root


def test_dfdc_parts_and_test_set(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    recs = build_index("dfdc", root)
    assert_well_formed(recs)
    assert [(r.key, r.label, r.split, r.method) for r in recs] == [
        ("dfdc/dfdc_train_part_0/aaa", REAL, "train", "real"),
        ("dfdc/dfdc_train_part_0/bbb", FAKE, "train", "dfdc_fake"),
        ("dfdc/dfdc_train_part_1/ccc", FAKE, "train", "dfdc_fake"),
        ("dfdc/test/ttt", FAKE, "test", "dfdc_fake"),
        ("dfdc/test/uuu", REAL, "test", "real"),
        ("dfdc/test/vvv", REAL, "test", "real")]
    assert next(r for r in recs if r.key == "dfdc/test/ttt").path.endswith("videos/ttt.mp4")
    assert len(build_index("dfdc", root, split="train")) == 3


def test_dfdc_entry_escaping_its_folder_is_skipped_never_read(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    touch(tmp_path / "secret.mp4")
    meta_path = root / "train/dfdc_train_part_0/metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["../../../secret.mp4"] = {"label": "FAKE", "split": "train", "original": None}
    meta[str(tmp_path / "secret.mp4")] = {"label": "FAKE", "split": "train", "original": None}
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(DatasetWarning, match="skipped 2 entries whose file name leaves"):
        recs = build_index("dfdc", root, split="train")
    assert len(recs) == 3 and not any("secret" in r.path for r in recs)


def test_dfdc_malformed_metadata_names_the_file(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    meta_path = root / "train/dfdc_train_part_1/metadata.json"
    meta_path.write_text('{"ccc.mp4": {"label": "FAKE"')
    with pytest.raises(DatasetError, match="malformed JSON") as err:
        build_index("dfdc", root, split="train")
    assert str(meta_path) in str(err.value)
    meta_path.write_text('{"ccc.mp4": {"label": "MAYBE"}}')
    with pytest.raises(DatasetError, match="no label REAL or FAKE"):
        build_index("dfdc", root, split="train")


def test_dfdc_bad_labels_missing_videos_wrong_root(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    labels = root / "dfdc_test/labels.csv"
    labels.write_text("filename,label\nttt.mp4,1\nuuu.mp4,fake\n")
    with pytest.raises(DatasetError, match=f"{labels}:3"):
        build_index("dfdc", root, split="test")
    labels.write_text("filename,label\nttt.mp4,1\ngone.mp4,0\n")
    with pytest.raises(DatasetError, match="1 DFDC videos .* missing.*gone.mp4"):
        build_index("dfdc", root, split="test")
    with pytest.raises(DatasetError, match="does not look like a DFDC root"):
        build_index("dfdc", tmp_path / "dfdc" / "train" / "dfdc_train_part_0")


def test_finalize_rejects_duplicate_keys():
    from data_modules.indexes.common import finalize
    from deepfakemae.records import VideoRecord

    rec = VideoRecord("x/1", "/d/1.mp4", REAL, "x", "real", "train")
    assert finalize([VideoRecord("x/2", "/d/2.mp4", FAKE, "x", "m", "train"), rec], "x")[0] == rec
    with pytest.raises(DatasetError, match="1 duplicate video keys: x/1"):
        finalize([rec, VideoRecord("x/1", "/e/1.mp4", REAL, "x", "real", "train")], "x")


def test_celebdf_list_with_a_byte_order_mark(celebdf_root):
    lst = celebdf_root / "List_of_testing_videos.txt"
    lst.write_bytes(b"\xef\xbb\xbf" + lst.read_bytes())  # saved by a Windows editor
    assert len(build_index("celebdf", celebdf_root, split="test")) == 4


def test_non_utf8_metadata_and_labels_name_the_file(tmp_path, celebdf_root):
    root = make_dfdc(tmp_path / "dfdc")
    meta_path = root / "train/dfdc_train_part_1/metadata.json"
    meta_path.write_bytes('{"ccc.mp4": {"label": "FAKE", "x": "é"}}'.encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8") as err:
        build_index("dfdc", root, split="train")
    assert str(meta_path) in str(err.value) and "re-download" in str(err.value)
    labels = root / "dfdc_test/labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())  # a BOM is fine
    assert len(build_index("dfdc", root, split="test")) == 3
    labels.write_bytes(b"filename,label\nt\xe9t.mp4,1\n")
    with pytest.raises(DatasetError, match="not UTF-8") as err:
        build_index("dfdc", root, split="test")
    assert str(labels) in str(err.value)
    lst = celebdf_root / "List_of_testing_videos.txt"
    lst.write_bytes(b"1 YouTube-real/0\xff.mp4\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        build_index("celebdf", celebdf_root, split="test")


def test_dfdc_training_parts_alone_with_the_default_split(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    shutil.rmtree(root / "dfdc_test")  # the training parts only, as downloaded
    assert [r.split for r in build_index("dfdc", root)] == ["train"] * 3  # split all
    with pytest.raises(DatasetError, match="--split train") as err:
        build_index("dfdc", root, split="test")
    assert "split='train'" not in str(err.value)


def test_missing_videos_name_the_cli_flag(tmp_path):
    root = make_dfdc(tmp_path / "dfdc")
    (root / "dfdc_test" / "vvv.mp4").unlink()
    with pytest.raises(DatasetError, match="--allow-missing"):
        build_index("dfdc", root, split="test")
    with pytest.warns(DatasetWarning, match="--allow-missing"):
        assert len(build_index("dfdc", root, split="test", allow_missing=True)) == 2
