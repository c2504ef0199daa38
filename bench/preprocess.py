"""Benchmark the face pipeline against a straightforward reference pipeline.

For 360p (GRID as is), 720p and 1080p (GRID upscaled with OpenCV into a temporary folder) it
prints faces/s, videos/s and face yield (faces found / frames sampled) of

* ``reference``: decode every frame sequentially (PyAV), dlib HOG on full-resolution sampled
  frames, largest face, dlib landmarks, alignment -- one process;
* ``ours (1 proc)``: :class:`FacePipeline.process` (sampled-frame decoding, downscaled detection,
  tracking) -- one process, models already loaded;
* ``run_preprocess w=1`` / ``w=2``: the full command path (cache writes, pool start-up included).

Usage: ``python bench/preprocess.py [--clips 2] [--frames 32]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_modules.records import VideoRecord  # noqa: E402
from deepfakemae.faces.align import align_face  # noqa: E402
from deepfakemae.faces.detect import select_face  # noqa: E402
from deepfakemae.faces.landmarks import DlibLandmarks  # noqa: E402
from deepfakemae.faces.pipeline import FaceConfig, FacePipeline, run_preprocess  # noqa: E402
from deepfakemae.faces.video import sample_indices  # noqa: E402

GRID = REPO / "tests" / "assets" / "grid"
SOURCES = sorted(GRID.glob("*.mpg")) + sorted((REPO / "deepfakemae" / "assets" / "grid").glob("*.mpg"))


def upscale_clip(src: Path, dst: Path, height: int) -> Path:
    """Re-encode ``src`` at ``height`` rows (16:9 canvas, face centred, reflected borders)."""
    width = height * 16 // 9
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        for frame in inp.decode(video=0):
            img = frame.to_ndarray(format="rgb24")
            scale = height / img.shape[0]
            img = cv2.resize(img, (round(img.shape[1] * scale), height), interpolation=cv2.INTER_CUBIC)
            pad = width - img.shape[1]
            img = cv2.copyMakeBorder(img, 0, 0, pad // 2, pad - pad // 2, cv2.BORDER_REFLECT_101)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return dst


class Reference:
    """Decode everything, detect at full resolution, landmarks, align."""

    def __init__(self, frames: int, size: int):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = DlibLandmarks()
        self.frames, self.size = frames, size

    def __call__(self, path: Path) -> tuple[int, int]:
        with av.open(str(path)) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        wanted = sample_indices(len(decoded), self.frames)
        faces = 0
        for i in wanted:
            image = decoded[i]
            rects = self.detector(image, 0)
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
                             float).reshape(-1, 4)
            found = select_face(boxes, np.ones(len(boxes)), None)
            if found is None:
                continue
            lm = self.landmarks(image, found.box[None])[0]
            align_face(image, lm, self.size)
            faces += 1
        return faces, len(wanted)


def timed(fn, paths):
    faces = frames = 0
    start = time.perf_counter()
    for p in paths:
        f, n = fn(p)
        faces += f
        frames += n
    return time.perf_counter() - start, faces, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2, help="clips per resolution")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = FaceConfig(frames=args.frames, size=args.size)
    ours = FacePipeline(config)
    ref = Reference(args.frames, args.size)

    def run_ours(path):
        rec = VideoRecord(path.stem, str(path), -1, "files", "unknown", "test")
        return len(ours.process(rec)), min(args.frames, 10**9)

    print(f"{'input':7} {'pipeline':20} {'faces/s':>8} {'videos/s':>9} {'yield':>6} {'speed-up':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, height in (("360p", None), ("720p", 720), ("1080p", 1080)):
            folder = tmp / label
            folder.mkdir()
            clips = []
            for src in SOURCES[: args.clips]:
                clips.append(src if height is None else upscale_clip(src, folder / f"{src.stem}.mp4", height))
            ref_s, ref_faces, ref_frames = timed(ref, clips)
            our_s, our_faces, our_frames = timed(run_ours, clips)
            speed = (our_faces / our_s) / max(ref_faces / ref_s, 1e-9)
            rows = [("reference", ref_s, ref_faces, ref_frames, 1.0),
                    ("ours (1 proc)", our_s, our_faces, our_frames, speed)]
            for workers in (1, 2):
                summary = run_preprocess([VideoRecord(c.stem, str(c), -1, "files", "unknown", "test")
                                          for c in clips], tmp / f"cache-{label}-{workers}",
                                         config, workers=workers, progress=False)
                rows.append((f"run_preprocess w={workers}", summary.seconds, summary.faces,
                             summary.frames, (summary.faces / summary.seconds) / (ref_faces / ref_s)))
            for name, secs, faces, frames, ratio in rows:
                print(f"{label:7} {name:20} {faces / secs:8.1f} {len(clips) / secs:9.2f} "
                      f"{faces / max(frames, 1):6.2f} {ratio:7.1f}x")
    print(f"detector stats (ours): {ours.detector.stats}")


if __name__ == "__main__":
    main()
