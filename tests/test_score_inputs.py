"""What ``score`` / ``preprocess`` take as inputs: score's own outputs and excluded folders are
never inputs, other files are listed as skipped, a folder in a ``.txt`` list is expanded, a
FIFO is refused, and a file whose face is in its second video stream is found there."""

from __future__ import annotations

import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from deepfakemae.faces.input_files import records_from_inputs, scan_inputs
from deepfakemae.faces.pipeline import FaceConfig, FaceError, FacePipeline

GRID = Path(__file__).resolve().parents[1] / "deepfakemae" / "assets" / "grid"


def _folder(root: Path) -> Path:
    """Two clips, an image and a note beside them, and a leftover ``score`` output folder."""
    root.mkdir()
    for name in ("bbaf2n.mpg", "lbax4n.mpg"):
        (root / name).symlink_to(GRID / name)
    cv2.imwrite(str(root / "photo.png"), np.zeros((8, 8, 3), np.uint8))
    (root / "notes.txt").write_text("not a video\n")
    old = root / "old_scores"
    (old / "explain" / "bbaf2n").mkdir(parents=True)
    for name in ("predictions.json", "predictions.csv"):
        (old / name).write_text("[]\n")
    for name in ("cam.png", "reconstruction.png"):
        cv2.imwrite(str(old / "explain" / "bbaf2n" / name), np.zeros((8, 8, 3), np.uint8))
    return root


def test_score_outputs_are_never_inputs_and_skipped_files_are_listed(tmp_path):
    root = _folder(tmp_path / "in")
    out = root / "predictions"  # `score --video .` with the default --output
    (out / "explain" / "lbax4n").mkdir(parents=True)
    cv2.imwrite(str(out / "explain" / "lbax4n" / "cam.png"), np.zeros((8, 8, 3), np.uint8))
    scan = scan_inputs(root, exclude=[out])
    assert sorted(r.key for r in scan.records) == ["bbaf2n", "lbax4n"]
    skipped = {p.name: why for p, why in scan.skipped}
    assert set(skipped) == {"photo.png", "notes.txt", "old_scores"}
    assert "image beside videos" in skipped["photo.png"]
    assert "output folder" in skipped["old_scores"]
    # the exclusion also holds with the paths spelled differently (relative input)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert sorted(r.key for r in scan_inputs(Path("."), [Path("predictions")]).records) == [
            "bbaf2n", "lbax4n"]
    finally:
        os.chdir(cwd)


def test_a_folder_in_a_list_is_expanded(tmp_path):
    root = _folder(tmp_path / "in")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((8, 8, 3), np.uint8))
    listing = tmp_path / "list.txt"
    listing.write_text("in\nframes\n")  # a folder of videos, a leaf frame folder
    scan = scan_inputs(listing)
    assert [r.key for r in scan.records] == ["in/bbaf2n", "in/lbax4n", "frames"]
    assert scan.records[0].path == str(root / "bbaf2n.mpg")
    assert {p.name for p, _ in scan.skipped} == {"photo.png", "notes.txt", "old_scores"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_is_refused_with_its_kind(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"stream\.mp4 is a named pipe \(FIFO\)"):
        scan_inputs(fifo)


def _two_stream_video(path: Path) -> Path:
    """An MP4 with two video streams: a blank 320x240 one first, the astronaut's face second
    (the first is the larger, the one a decoder picks by default)."""
    from skimage.data import astronaut

    face = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    with av.open(str(path), "w") as out:
        blank = out.add_stream("mpeg4", rate=10)
        blank.width, blank.height, blank.pix_fmt = 320, 240, "yuv420p"
        faces = out.add_stream("mpeg4", rate=10)
        faces.width, faces.height, faces.pix_fmt = 256, 256, "yuv420p"
        for i in range(6):
            plain = np.full((240, 320, 3), 40 + 10 * i, np.uint8)
            for stream, image in ((blank, plain), (faces, face)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
        for stream in (blank, faces):
            for packet in stream.encode():
                out.mux(packet)
    return path


@pytest.mark.slow  # about 10 s: the face models load
def test_a_face_in_the_second_video_stream_is_found(tmp_path):
    path = _two_stream_video(tmp_path / "two.mp4")
    record = records_from_inputs(path)[0]
    pipeline = FacePipeline(FaceConfig(frames=3, size=64))
    entry = pipeline.process(record)
    assert len(entry) == 3 and entry.meta["video_stream"] == 1
    x0, y0, x1, y1 = entry.boxes[0]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256  # in the 256 px stream's pixels
    # a file without a face in any stream says it looked at all of them
    with av.open(str(tmp_path / "plain.mp4"), "w") as out:
        streams = [out.add_stream("mpeg4", rate=10) for _ in range(2)]
        for s in streams:
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(3):
            for s in streams:
                frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), "rgb24")
                for packet in s.encode(frame):
                    out.mux(packet)
        for s in streams:
            for packet in s.encode():
                out.mux(packet)
    with pytest.raises(FaceError, match="nor in any of its other 1") as info:
        pipeline.process(records_from_inputs(tmp_path / "plain.mp4")[0])
    assert info.value.status == "no_face"
