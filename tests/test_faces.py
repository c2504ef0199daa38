"""Face pipeline pieces on real faces: decoding, detection, landmarks, alignment, cache."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from face_assets import CLIPS, grid_frames, write_video

from deepfakemae.faces.align import (
    PAD_RGB,
    align_face,
    align_matrix,
    padding_fraction,
    similarity_transform,
    template_points,
)
from deepfakemae.faces.cache import FaceCache
from deepfakemae.faces.detect import (
    DetectorError,
    FaceDetector,
    MtcnnDetector,
    box_iou,
    check_detector,
    select_face,
)
from deepfakemae.faces.ibug68 import five_points
from deepfakemae.faces.landmarks import DlibLandmarks, LandmarkError, build_landmarks
from deepfakemae.faces.pipeline import FaceConfig, FaceError, FacePipeline
from deepfakemae.faces.video import (
    DecordSource,
    PyAVSource,
    VideoError,
    open_video,
    read_sampled,
    sample_indices,
)
from deepfakemae.records import VideoRecord

CLIP = CLIPS[0]


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def dlib_landmarks() -> DlibLandmarks:
    return DlibLandmarks()


@pytest.fixture(scope="module")
def astronaut_face(detector, dlib_landmarks):
    image = skimage.data.astronaut()  # (512, 512, 3) uint8 RGB
    found = detector(image)
    assert found is not None
    return image, found, dlib_landmarks(image, found.box[None])[0]


def test_sample_indices_uniform_and_deterministic():
    assert sample_indices(10, 4).tolist() == [1, 3, 6, 8]
    assert sample_indices(3, 32).tolist() == [0, 1, 2]
    assert sample_indices(0, 4).size == 0
    idx = sample_indices(300, 32)
    assert len(np.unique(idx)) == 32 and idx.min() >= 0 and idx.max() < 300
    assert np.array_equal(idx, sample_indices(300, 32))


@pytest.fixture(scope="module")
def grid_mp4(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("mp4") / "grid.mp4", grid_frames(CLIP)[:30])


def test_decord_reads_only_sampled_frames(grid_mp4):
    source = open_video(grid_mp4)
    assert isinstance(source, DecordSource)
    assert source.num_frames == 30 and source.fps == pytest.approx(25.0)
    frames, indices, total, fps = read_sampled(grid_mp4, 4)
    assert indices.tolist() == [3, 11, 18, 26] and total == 30
    assert len(frames) == 4 and frames[0].shape == (288, 360, 3) and frames[0].dtype == np.uint8
    sequential = grid_frames(grid_mp4)
    for i, frame in zip(indices, frames, strict=True):  # the very frames a full sequential decode gives
        assert np.array_equal(frame, sequential[i])


def test_pyav_seeking_matches_sequential_decode(grid_mp4):
    for path in (grid_mp4, CLIP):  # MPEG-PS seeks overshoot: must still land on the right frame
        sequential = grid_frames(path)
        idx = np.array([0, 9, 23, len(sequential) - 1])
        source = PyAVSource(path)
        assert source.num_frames == len(sequential)
        got = source.read(idx)
        assert len(got) == 4
        for i, frame in zip(idx, got, strict=True):
            assert np.array_equal(frame, sequential[i])


def test_mpeg_program_stream_uses_pyav():
    # decord drops the first GOP of MPEG-1 program streams, so .mpg goes through PyAV
    assert isinstance(open_video(CLIP), PyAVSource)
    frames, indices, total, _ = read_sampled(CLIP, 4)
    assert total == 75 and indices.tolist() == [9, 28, 46, 65]
    sequential = grid_frames(CLIP)
    assert all(np.array_equal(f, sequential[i]) for f, i in zip(frames, indices, strict=True))


def test_frame_folder_sorted_numerically(tmp_path):
    import cv2

    frames = grid_frames(CLIP)[:12]
    for i, frame in enumerate(frames):  # frame_2 must come before frame_10
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    got, indices, total, _ = read_sampled(tmp_path, 12)
    assert total == 12 and indices.tolist() == list(range(12))
    for a, b in zip(frames, got, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("content,status", [(b"", "empty"), (b"not a video\n" * 20, "unreadable")])
def test_bad_files_raise_status(tmp_path, content, status):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as err:
        read_sampled(path, 4)
    assert err.value.status == status and "bad.mp4" in str(err.value)


def test_astronaut_landmarks(astronaut_face):
    image, found, lm = astronaut_face
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = found.box
    assert 60 < x1 - x0 < 200  # the astronaut's face (dlib boxes are tight)
    inside = (lm[:, 0] > x0 - 20) & (lm[:, 0] < x1 + 20) & (lm[:, 1] > y0 - 40) & (lm[:, 1] < y1 + 20)
    assert inside.all()


def test_aligned_crop_geometry(astronaut_face):
    image, _, lm = astronaut_face
    crop, lm_crop = align_face(image, lm, size=112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert (lm_crop > 0).all() and (lm_crop < 112).all()
    eyes_y = lm_crop[36:48, 1].mean()
    nose_y = lm_crop[30, 1]
    mouth_y = lm_crop[48:68, 1].mean()
    assert eyes_y < nose_y < mouth_y
    # the face fills most of the crop but brows and chin keep a margin
    assert lm_crop[17:27, 1].min() > 5 and lm_crop[8, 1] < 107
    assert lm_crop[:, 0].max() - lm_crop[:, 0].min() > 0.6 * 112
    # the 5 points land on the template (to within 8% of the side: a smile widens the mouth)
    assert np.abs(five_points(lm_crop) - template_points(112)).max() < 0.08 * 112


def _tight_crop(image: np.ndarray, box: np.ndarray, widen: float = 1.3) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a tight face crop: the dlib box widened by ``widen`` (even sides)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = widen * (box[2] - box[0]) / 2
    x0, y0 = int(cx - half), int(cy - 1.1 * half)
    w, h = int(2 * half) // 2 * 2, int(2.2 * half) // 2 * 2
    return x0, y0, x0 + w, y0 + h


def test_pre_cropped_face_gets_no_reflected_pixels(astronaut_face):
    """A frame that is already a tight face crop: the crop window runs past it and those pixels
    are PAD_RGB, not mirrored face; the rest equals the same face cut from a sentinel canvas."""
    image, found, lm = astronaut_face
    x0, y0, x1, y1 = _tight_crop(image, found.box)
    tight = np.ascontiguousarray(image[y0:y1, x0:x1])
    lm_tight = lm - np.float32([x0, y0])
    sentinel = np.full_like(image, (255, 0, 255))  # the out-of-frame area in a known colour
    sentinel[y0:y1, x0:x1] = tight
    size = 112
    crop, lm_crop = align_face(tight, lm_tight, size)
    ref, lm_ref = align_face(sentinel, lm, size)
    np.testing.assert_allclose(lm_crop, lm_ref, atol=1e-3)
    mat = align_matrix(lm_tight, size)
    cover = cv2.warpAffine(np.ones(tight.shape[:2], np.float32), mat, (size, size),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside, outside = cover >= 1.0, cover <= 0.0  # (size, size); the rest: a one-pixel seam
    assert outside.mean() > 0.1  # the face fills the frame: a fair share of the crop is outside
    assert (ref[outside] == (255, 0, 255)).all()
    assert (crop[outside] == PAD_RGB).all()  # no mirrored (or any) image content
    assert np.abs(crop[inside].astype(int) - ref[inside].astype(int)).max() <= 2
    assert outside.mean() <= padding_fraction(tight.shape[:2], mat, size) <= 1 - inside.mean()


def test_faces_inside_the_frame_keep_their_crops(astronaut_face):
    """A crop window inside the frame is unchanged by the border fill (no fill colour reaches
    it), padding 0, and (to one level in OpenCV 5.1) the mirrored-border warp earlier caches were
    made with."""
    image, _, lm = astronaut_face
    mat = align_matrix(lm, 224)
    assert padding_fraction(image.shape[:2], mat, 224) == 0.0
    crop, _ = align_face(image, lm, 224)
    for fill in ((0, 0, 0), (255, 255, 255)):
        other = cv2.warpAffine(image, mat, (224, 224), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
        assert np.array_equal(crop, other)
    before = cv2.warpAffine(image, mat, (224, 224), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    # OpenCV 5.1's constant-fill path rounds about 1 value in 15,000 one level off its mirrored one
    tolerance = 1 if tuple(map(int, cv2.__version__.split(".")[:2])) >= (5, 1) else 0
    assert np.abs(crop.astype(int) - before.astype(int)).max() <= tolerance


@pytest.mark.slow
def test_pipeline_records_the_padding_of_a_pre_cropped_video(tmp_path, astronaut_face):
    """The real pipeline on a video of tight face crops (as WildDeepfake / DFDC face clips):
    ``meta["padding"]`` per kept frame, and the padded pixels are PAD_RGB."""
    image, found, _ = astronaut_face
    x0, y0, x1, y1 = _tight_crop(image, found.box)
    video = write_video(tmp_path / "tight.mp4", [np.ascontiguousarray(image[y0:y1, x0:x1])] * 4)
    record = VideoRecord("wilddeepfake/tight", str(video), 0, "wilddeepfake", "real", "test")
    entry = FacePipeline(FaceConfig(frames=2, size=112)).process(record)
    assert len(entry.meta["padding"]) == len(entry) == 2
    for crop, pad in zip(entry.crops, entry.meta["padding"], strict=True):
        assert pad > 0.1
        assert (crop == PAD_RGB).all(-1).mean() >= pad - 0.05  # less a one-pixel seam
    grid = FacePipeline(FaceConfig(frames=2, size=112)).process(
        VideoRecord("grid/bbaf2n", str(CLIP), 0, "grid", "real", "test"))
    assert grid.meta["padding"] == [0.0, 0.0]  # a face well inside its frame


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    mat = similarity_transform(src, dst)
    assert np.allclose(mat[:, :2], scale * rot) and np.allclose(mat[:, 2], shift)


def test_select_face_follows_previous_box():
    boxes = np.array([[0, 0, 200, 200], [300, 300, 380, 380]], float)
    scores = np.array([1.0, 0.5])
    assert select_face(boxes, scores, None).box[0] == 0  # largest
    follow = select_face(boxes, scores, np.array([290, 290, 370, 370.0]))
    assert follow.box[0] == 300  # same person as before, although smaller
    assert box_iou(boxes[0], boxes).tolist()[0] == pytest.approx(1.0)


def test_tracking_agrees_with_full_detection(detector):
    frames = [grid_frames(CLIP)[i] for i in sample_indices(75, 6)]
    plain = FaceDetector(track=False)
    previous = None
    for frame in frames:
        tracked = detector(frame, previous)
        full = plain(frame)
        assert tracked is not None and full is not None
        assert box_iou(full.box, tracked.box[None])[0] > 0.6
        previous = tracked.box


def test_crop_round_trip_through_cache(tmp_path):
    record = VideoRecord("grid/bbaf2n", str(CLIP), 0, "grid", "real", "test")
    entry = FacePipeline(FaceConfig(frames=4, size=112)).process(record)
    assert len(entry) == 4 and entry.crops.shape == (4, 112, 112, 3)
    cache = FaceCache(tmp_path)
    cache.write(entry)
    back = cache.read(record.key)
    assert np.array_equal(back.landmarks, entry.landmarks)  # bit-exact
    assert np.array_equal(back.frame_indices, entry.frame_indices)
    assert np.array_equal(back.boxes, entry.boxes)
    # JPEG quality 95: mean absolute pixel error stays below 3 grey levels
    assert np.abs(back.crops.astype(int) - entry.crops.astype(int)).mean() < 3
    meta = back.meta
    assert meta["num_frames_total"] == 75 and meta["fps"] == pytest.approx(25.0)
    assert meta["landmarks"] == "dlib" and meta["size"] == 112 and meta["label"] == 0


def test_unknown_backend_and_fan_error():
    with pytest.raises(ValueError, match="dlib"):
        build_landmarks("nope")
    # offline or without face-alignment's deps: a clear error that points to --landmarks dlib
    try:
        build_landmarks("fan")
    except LandmarkError as exc:
        assert "--landmarks dlib" in str(exc)


# -- MTCNN fallback ----------------------------------------------------------------------------

def made_dark(frame: np.ndarray) -> np.ndarray:
    """A GRID frame as an underexposed camera would record it (gamma 2, 4 % of the light)."""
    return (np.power(frame / 255.0, 2.0) * 255 * 0.04).astype(np.uint8)


@pytest.fixture(scope="module")
def fallback_pipeline() -> FacePipeline:
    return FacePipeline(FaceConfig(frames=4, size=112, detector="dlib+mtcnn"))


def test_mtcnn_weights_ship_in_the_wheel_and_load_offline(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    mtcnn = MtcnnDetector()
    boxes, probs, points = mtcnn.detect_all(skimage.data.astronaut())
    assert boxes.shape == (1, 4) and points.shape == (1, 5, 2) and probs[0] > 0.99


def test_fallback_finds_a_made_dark_face_that_dlib_misses(fallback_pipeline, dlib_landmarks):
    frame = grid_frames(CLIP, 25)[1]
    reference = dlib_landmarks(frame, FaceDetector(backend="dlib")(frame).box[None])[0]
    dark = made_dark(frame)
    assert FaceDetector(backend="dlib", track=False)(dark) is None
    found = fallback_pipeline.detector(dark)
    assert found is not None and found.source == "mtcnn" and found.points.shape == (5, 2)
    marks = fallback_pipeline.face_landmarks(dark, found)
    iod = np.linalg.norm(reference[42:48].mean(0) - reference[36:42].mean(0))
    assert np.abs(marks - reference).mean() / iod < 0.1  # the 68 points land on the face


def test_mtcnn_landmarks_of_a_rotated_face(fallback_pipeline, dlib_landmarks):
    frame = grid_frames(CLIP, 25)[1]
    reference = dlib_landmarks(frame, FaceDetector(backend="dlib")(frame).box[None])[0]
    h, w = frame.shape[:2]
    mat = cv2.getRotationMatrix2D((w / 2, h / 2), 50, 1.0)
    rotated = cv2.warpAffine(frame, mat, (w, h))
    found = fallback_pipeline.detector(rotated)
    assert found is not None and found.source == "mtcnn"  # dlib's HOG misses at 50 degrees
    marks = fallback_pipeline.face_landmarks(rotated, found)
    iod = np.linalg.norm(reference[42:48].mean(0) - reference[36:42].mean(0))
    expected = reference @ mat[:, :2].T + mat[:, 2]
    assert np.abs(marks - expected).mean() / iod < 0.1


def test_pipeline_records_which_detector_found_each_face(tmp_path, fallback_pipeline):
    frames = [made_dark(f) for f in grid_frames(CLIP)[:20]]
    video = write_video(tmp_path / "dark.mp4", frames)
    record = VideoRecord("grid/dark", str(video), 0, "grid", "real", "test")
    entry = fallback_pipeline.process(record)
    assert len(entry) >= 3 and set(entry.meta["detectors"]) <= {"mtcnn", "tracked", "dlib"}
    assert "mtcnn" in entry.meta["detectors"] and len(entry.meta["detectors"]) == len(entry)
    with pytest.raises(FaceError, match="no face"):
        FacePipeline(FaceConfig(frames=4, size=112, detector="dlib")).process(record)
    easy = FacePipeline(FaceConfig(frames=4, size=112, detector="dlib+mtcnn"))
    bright = easy.process(VideoRecord("grid/bbaf2n", str(CLIP), 0, "grid", "real", "test"))
    assert set(bright.meta["detectors"]) <= {"dlib", "tracked"}
    assert easy.detector._mtcnn is None  # an easy video never loads MTCNN


def test_detector_choice_is_checked():
    with pytest.raises(DetectorError, match="choose one of"):
        check_detector("hog")
    check_detector("dlib+mtcnn")  # facenet-pytorch is installed here
    with pytest.raises(ValueError, match="dlib"):
        FaceDetector(backend="nope")
