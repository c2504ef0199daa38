"""The face cache: atomic entries, failures, manifest, key safety."""

import json

import numpy as np
import pytest

from deepfakemae.faces.cache import (
    CacheError,
    DamagedEntryError,
    FaceCache,
    FaceEntry,
    validate_key,
)


def _entry(key: str, t: int = 3, size: int = 32) -> FaceEntry:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = ((xx + yy) * 255 // (2 * size)).astype(np.uint8)  # JPEG-friendly gradient
    crops = np.stack([np.stack([smooth, smooth[::-1], smooth.T], -1)] * t)
    return FaceEntry(key=key, crops=crops,
                     landmarks=rng.uniform(0, size, (t, 68, 2)).astype(np.float32),
                     frame_indices=np.arange(t) * 5, scores=np.ones(t, np.float32),
                     boxes=np.tile(np.float32([1, 2, 30, 31]), (t, 1)),
                     meta={"label": 1, "dataset": "ffpp", "method": "Deepfakes", "split": "train"})


def test_round_trip_within_jpeg_tolerance(tmp_path):
    cache = FaceCache(tmp_path)
    entry = _entry("ffpp/c23/Deepfakes/000_003")
    cache.write(entry)
    back = cache.read(entry.key)
    assert back.crops.shape == entry.crops.shape
    assert np.abs(back.crops.astype(int) - entry.crops.astype(int)).mean() < 3  # JPEG q95
    np.testing.assert_array_equal(back.landmarks, entry.landmarks)
    np.testing.assert_array_equal(back.frame_indices, entry.frame_indices)
    assert back.meta["status"] == "ok" and back.meta["method"] == "Deepfakes"
    part = cache.read(entry.key, frames=[2])
    np.testing.assert_array_equal(part.frame_indices, [10])


def test_failure_recorded_and_manifest_lists_everything(tmp_path):
    cache = FaceCache(tmp_path)
    cache.write(_entry("a/ok"))
    cache.write_failure("a/bad", "no_face", "no face in 4 sampled frames", {"label": 0})
    assert cache.is_done("a/ok") and cache.is_done("a/bad") and not cache.is_done("a/none")
    records = {r["key"]: r for r in cache.manifest()}
    assert records["a/ok"]["status"] == "ok"
    assert records["a/bad"]["status"] == "no_face" and "no face" in records["a/bad"]["error"]
    # a later success replaces the failure record
    cache.write(_entry("a/bad"))
    cache.rebuild_manifest()
    assert {r["key"]: r["status"] for r in cache.manifest()}["a/bad"] == "ok"


def test_leftover_temp_files_are_not_entries(tmp_path):
    cache = FaceCache(tmp_path)
    cache.write(_entry("v1"))
    (cache.entries_dir / ".tmp-abc.npz").write_bytes(b"half written")
    assert [r["key"] for r in cache.iter_records()] == ["v1"]


def test_corrupt_entry_names_the_file(tmp_path):
    cache = FaceCache(tmp_path)
    cache.entry_path("v1").parent.mkdir(parents=True)
    cache.entry_path("v1").write_bytes(b"not a zip")
    with pytest.raises(CacheError, match="v1.npz"):
        cache.read("v1")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "", "a\\b"])
def test_unsafe_keys_rejected(key):
    with pytest.raises(CacheError):
        validate_key(key)


def test_malformed_manifest_line_is_reported(tmp_path):
    cache = FaceCache(tmp_path)
    cache.write(_entry("v1"))
    cache.rebuild_manifest()
    cache.manifest_path.write_text(json.dumps({"key": "v1"}) + "\n{broken\n")
    with pytest.raises(CacheError, match="manifest.jsonl:2"):
        cache.manifest()


def _damaged(cache: FaceCache, key: str, **replace) -> None:
    """Rewrite ``key``'s entry with some arrays replaced (e.g. an object array)."""
    path = cache.entry_path(key)
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays.update(replace)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_damaged_entries_are_reported_not_raised(tmp_path):
    cache = FaceCache(tmp_path)
    for key in ("good", "object", "flipped", "shape"):
        cache.write(_entry(key))
    _damaged(cache, "object", meta=np.array([{"key": "object"}], dtype=object))
    _damaged(cache, "shape", landmarks=np.zeros((3, 5, 2), np.float32))
    data = bytearray(cache.entry_path("flipped").read_bytes())
    data[len(data) // 3] ^= 0x10  # inside the JPEG bytes
    cache.entry_path("flipped").write_bytes(bytes(data))
    cache.write_failure("bad_json", "no_face", "x")
    cache.failure_path("bad_json").write_bytes(b"\xff{not json")
    cache.rebuild_manifest()
    status = {r["key"]: r["status"] for r in cache.manifest()}
    assert status == {"good": "ok", "object": "damaged", "flipped": "ok", "shape": "ok",
                      "bad_json": "damaged"}  # the manifest reads meta only
    for key, reason in (("object", "pickle"), ("flipped", "CRC"), ("shape", "landmarks")):
        with pytest.raises(DamagedEntryError, match=reason) as err:
            cache.read(key)
        assert err.value.key == key and str(cache.entry_path(key)) in str(err.value)
    cache.check("good")


def test_failure_replaces_a_damaged_entry(tmp_path):
    cache = FaceCache(tmp_path)
    cache.write(_entry("v"))
    cache.entry_path("v").write_bytes(b"garbage")
    cache.write_failure("v", "no_face", "no face")
    assert not cache.has_entry("v") and cache.record("v")["status"] == "no_face"
