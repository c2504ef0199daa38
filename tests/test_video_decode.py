"""PyAV decoding of sampled frames: keyframe seeking and skipped non-reference frames must give
exactly the frames of a full sequential decode, on streams with B-frames and open GOPs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from face_assets import CLIPS, grid_frames

from deepfakemae.faces.pipeline import FaceConfig, available_cpus, decode_threads_for
from deepfakemae.faces.video import PyAVSource, open_video, read_sampled, sample_indices

#: name -> x264 settings: closed GOP of 12 with B-frames, open GOP in Matroska, no B-frames
STREAMS = {
    "closed.mp4": "keyint=12:min-keyint=12:scenecut=0:bframes=3",
    "open.mkv": "keyint=10:min-keyint=10:scenecut=0:bframes=3:open-gop=1",
    "nob.mp4": "keyint=20:min-keyint=20:scenecut=0:bframes=0",
}


def encode(path: Path, frames: list[np.ndarray], params: str) -> Path:
    """H.264 (x264 ``params``) of (H,W,3) RGB frames at 25 fps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "superfast", "crf": "23", "x264-params": params}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def streams(tmp_path_factory) -> dict[str, tuple[Path, list[np.ndarray]]]:
    """Each stream and its frames as a full sequential PyAV decode gives them."""
    folder = tmp_path_factory.mktemp("streams")
    frames = grid_frames(CLIPS[1])  # 75 frames
    out = {}
    for name, params in STREAMS.items():
        path = encode(folder / name, frames, params)
        out[name] = (path, grid_frames(path))
    return out


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("threads", [1, 2])
def test_indexed_reads_equal_sequential_decode(streams, name, threads):
    path, sequential = streams[name]
    source = PyAVSource(path, threads=threads)
    assert source._index is not None and source.num_frames == len(sequential) == 75
    reads = [sample_indices(75, 32), sample_indices(75, 4), np.array([74]), np.array([74]),
             np.array([0, 5, 6, 40, 41, 74]), np.array([70]), np.array([3]), np.array([2, 50])]
    for idx in reads:  # forwards, repeated and backwards reads on one source
        got = source.read(idx)
        assert len(got) == len(idx), (name, idx)
        for i, frame in zip(idx, got, strict=True):
            assert np.array_equal(frame, sequential[i]), (name, i)
    source.close()


def test_sampled_read_skips_unneeded_frames(streams):
    path, sequential = streams["closed.mp4"]
    source = PyAVSource(path)
    idx = np.array([1, 30, 61])  # each past a keyframe the decoder can jump to
    got = source.read(idx)
    assert all(np.array_equal(f, sequential[i]) for f, i in zip(got, idx, strict=True))
    assert source.decoded < 30  # a full decode up to frame 61 outputs 62 frames
    source.close()

    dense = PyAVSource(path)
    idx = sample_indices(75, 8)  # gaps shorter than the GOP: decode on, dropping B-frames
    dense.read(idx)
    assert dense.decoded < 60
    dense.close()


def test_pipeline_backend_matches_decord(streams):
    path, sequential = streams["closed.mp4"]
    pyav_frames, pyav_idx, total, fps = read_sampled(path, 9, backend="pyav")
    decord_frames, decord_idx, _, _ = read_sampled(path, 9, backend="decord")
    assert total == 75 and fps == pytest.approx(25.0)
    assert pyav_idx.tolist() == decord_idx.tolist() == sample_indices(75, 9).tolist()
    for i, frame in zip(pyav_idx, pyav_frames, strict=True):
        assert np.array_equal(frame, sequential[i])
    assert isinstance(open_video(path, backend="pyav"), PyAVSource)
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(path, backend="opencv")


def test_decode_threads_split_the_cpus_among_workers():
    cpus = available_cpus()
    assert decode_threads_for(FaceConfig(), workers=1) == cpus
    assert decode_threads_for(FaceConfig(), workers=2) == max(1, cpus // 2)
    assert decode_threads_for(FaceConfig(), workers=4 * cpus) == 1
    assert decode_threads_for(FaceConfig(decode_threads=3), workers=2) == 3


def sideways_clip(path: Path, upright: list[np.ndarray], rotation: int) -> Path:
    """Store ``upright`` frames turned by ``-rotation`` degrees plus a display rotation of
    ``rotation`` degrees (counterclockwise), the way phones store portrait video."""
    stored = [np.ascontiguousarray(np.rot90(f, -rotation // 90)) for f in upright]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = stored[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(rotation)
        for frame in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("rotation", [-90, 90, 180])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_display_rotation_is_applied(tmp_path, rotation, backend):
    upright = grid_frames(CLIPS[0], step=10)  # 8 frames of 288x360
    path = sideways_clip(tmp_path / f"rot{rotation}.mp4", upright, rotation)
    frames, idx, total, _ = read_sampled(path, 4, backend=backend)
    assert total == 8 and len(frames) == 4
    for i, frame in zip(idx, frames, strict=True):
        assert frame.shape == upright[i].shape  # (288, 360, 3) as displayed
        assert np.abs(frame.astype(int) - upright[i]).mean() < 4  # H.264 noise only


def test_phone_portrait_video_keeps_its_faces(tmp_path):
    from deepfakemae.faces.pipeline import FacePipeline
    from deepfakemae.records import VideoRecord

    upright = grid_frames(CLIPS[1], step=10)
    path = sideways_clip(tmp_path / "phone.mp4", upright, -90)
    record = VideoRecord(key="phone", path=str(path), label=-1, dataset="files",
                         method="unknown", split="test")
    entry = FacePipeline(FaceConfig(frames=4, size=64)).process(record)  # no_face before
    assert len(entry) == 4
