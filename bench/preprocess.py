"""Benchmark the face pipeline against a straightforward reference pipeline.

Inputs are built from the GRID clips (75 frames, 360x288, 25 fps): the frames are played
forwards and backwards (ping-pong, so there is no cut) to ~10-s clips and encoded with libx264
(preset superfast: CABAC, 3 B-frames, deblocking; CRF 23 like FF++ c23) with a keyframe every
``--gop`` frames (default 60: 2.4 s at 25 fps, 2 s at 30 fps; FF++ c23 and DFDC have one every
~1-10 s):

* 360p  -- GRID's own 360x288 frames, 25 fps, 250 frames;
* 720p  -- 1280x720 at 25 fps, 250 frames (like FF++);
* 1080p -- 1920x1080 at 30 fps, 300 frames (like DFDC: 10 s at 30 fps).

For each resolution it prints faces/s, videos/s and face yield (faces / frames sampled) of

* ``reference``: decode every frame sequentially (PyAV, its default threading) and convert each
  to RGB like ``cv2.VideoCapture.read``, keep the sampled ones, dlib HOG (upsample 0) on the
  full-resolution frame, largest face, dlib landmarks, alignment -- one process;
* ``ours 1 proc``: :meth:`FacePipeline.process` (PyAV with keyframe seeking and non-reference
  frames skipped, RGB only for sampled frames, detection on a downscaled frame, tracking, MTCNN
  where dlib finds nothing), models loaded once, with 1 decoder thread and with the default (all
  CPUs); with 1 thread also ``--face-detector dlib`` (no MTCNN fallback), the cost of the fallback;
* ``run_preprocess w=1 / w=2``: the full command path (cache writes, pool start-up included),
  and the same with the start-up (spawn, imports, model loading) excluded.

Every row is compared with the reference measured in the same run, and with the figures the
issue states for the reference pipeline (1.7 faces/s at 720p, 0.9 faces/s at 1080p).
The reference and ours alternate clip by clip so both see the same machine load.

Usage: ``python bench/preprocess.py [--clips 4] [--frames 32] [--gop 60] [--clips-dir DIR]
[--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepfakemae.faces.align import align_face  # noqa: E402
from deepfakemae.faces.detect import select_face  # noqa: E402
from deepfakemae.faces.landmarks import DlibLandmarks  # noqa: E402
from deepfakemae.faces.pipeline import FaceConfig, FacePipeline, available_cpus  # noqa: E402
from deepfakemae.faces.runner import run_preprocess  # noqa: E402
from deepfakemae.faces.video import sample_indices  # noqa: E402
from deepfakemae.records import VideoRecord  # noqa: E402

GRID_DIRS = (REPO / "deepfakemae" / "assets" / "grid",)
#: label -> (height or None for GRID's own size, fps, frames)
RESOLUTIONS = {"360p": (None, 25, 250), "720p": (720, 25, 250), "1080p": (1080, 30, 300)}
#: faces/s of the reference pipeline as stated in the issue
ISSUE_REFERENCE = {"720p": 1.7, "1080p": 0.9}


def grid_sources() -> list[Path]:
    """The GRID clips shipped with the repository, one per name."""
    by_name: dict[str, Path] = {}
    for folder in GRID_DIRS:
        for path in sorted(folder.glob("*.mpg")):
            by_name.setdefault(path.name, path)
    return [by_name[name] for name in sorted(by_name)]


def make_clip(src: Path, dst: Path, height: int | None, fps: int, frames: int, gop: int) -> Path:
    """Encode ``frames`` ping-pong frames of ``src`` at ``height`` rows (16:9 canvas, face
    centred, reflected borders; GRID's own size when ``height`` is None) to H.264 in MP4."""
    with av.open(str(src)) as inp:
        images = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]  # (288, 360, 3)
    if height is not None:
        width = height * 16 // 9
        resized = []
        for img in images:
            scaled = cv2.resize(img, (round(img.shape[1] * height / img.shape[0]), height),
                                interpolation=cv2.INTER_CUBIC)
            pad = width - scaled.shape[1]
            resized.append(cv2.copyMakeBorder(scaled, 0, 0, pad // 2, pad - pad // 2,
                                              cv2.BORDER_REFLECT_101))
        images = resized
    order = list(range(len(images))) + list(range(len(images) - 2, 0, -1))  # ping-pong
    tmp = dst.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "superfast", "crf": "23",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(images[order[i % len(order)]], format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(dst)
    return dst


def describe_clip(path: Path) -> str:
    """Size, frame count, keyframes and non-reference (droppable B) frames of a clip."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        width, height, rate = stream.width, stream.height, stream.average_rate
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        referenced = sum(1 for _ in container.decode(stream))
    keys = sum(p.is_keyframe for p in packets)
    mbit = path.stat().st_size * 8 / 1e6 / (len(packets) / float(rate))
    return (f"{width}x{height} {float(rate):.0f} fps, {len(packets)} frames, {keys} keyframes, "
            f"{len(packets) - referenced} non-reference frames, {mbit:.1f} Mbit/s")


class Reference:
    """Decode everything, detect at full resolution, landmarks, align."""

    def __init__(self, frames: int, size: int, upsample: int = 0):
        import dlib

        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = DlibLandmarks()
        self.frames, self.size, self.upsample = frames, size, upsample

    def __call__(self, path: Path) -> tuple[int, int]:
        with av.open(str(path)) as container:
            total = container.streams.video[0].frames
            wanted = set(sample_indices(total, self.frames).tolist())
            kept = []
            for i, frame in enumerate(container.decode(video=0)):
                image = frame.to_ndarray(format="rgb24")  # every frame, as VideoCapture.read
                if i in wanted:
                    kept.append(image)
        faces = 0
        for image in kept:
            rects = self.detector(image, self.upsample)
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
                             float).reshape(-1, 4)
            found = select_face(boxes, np.ones(len(boxes)), None)
            if found is None:
                continue
            lm = self.landmarks(image, found.box[None])[0]
            align_face(image, lm, self.size)
            faces += 1
        return faces, len(wanted)


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its reaped children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Tally:
    """Wall seconds, CPU seconds, faces and frames accumulated over clips."""

    def __init__(self):
        self.seconds = self.cpu = self.faces = self.frames = self.videos = 0

    def add(self, fn, path: Path) -> None:
        start, cpu = time.perf_counter(), cpu_seconds()
        faces, frames = fn(path)
        self.seconds += time.perf_counter() - start
        self.cpu += cpu_seconds() - cpu
        self.faces += faces
        self.frames += frames
        self.videos += 1


def record_for(path: Path) -> VideoRecord:
    return VideoRecord(path.stem, str(path), -1, "files", "unknown", "test")


def profile_one(pipeline: FacePipeline, clip: Path, top: int = 14) -> None:
    """cProfile one clip through ``pipeline`` and print where the time goes."""
    pipeline.process(record_for(clip))  # warm caches
    prof = cProfile.Profile()
    prof.enable()
    pipeline.process(record_for(clip))
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    groups = {"decode (PyAV decode + demux)": 0.0, "RGB conversion of kept frames": 0.0,
              "detection (dlib HOG)": 0.0, "resize for detection": 0.0,
              "landmarks (dlib)": 0.0, "alignment (warpAffine)": 0.0}
    for (file, _, name), row in stats.stats.items():
        tt = row[2]  # own time
        if "'decode' of" in name or name == "<built-in method builtins.next>":
            groups["decode (PyAV decode + demux)"] += tt
        elif "to_ndarray" in name:
            groups["RGB conversion of kept frames"] += tt
        elif "_dlib_pybind11.run" in name:
            groups["detection (dlib HOG)"] += tt
        elif "resize" in name:
            groups["resize for detection"] += tt
        elif file.endswith("landmarks.py") or "shape_predictor" in name:
            groups["landmarks (dlib)"] += tt
        elif "warpAffine" in name:
            groups["alignment (warpAffine)"] += tt
    print(f"\nprofile of ours on {clip.name} ({total:.2f} s, 1 process):")
    for name, tt in groups.items():
        print(f"  {name:32} {tt:6.2f} s {100 * tt / total:5.1f}%")
    rest = total - sum(groups.values())
    print(f"  {'other (Python, numpy, I/O)':32} {rest:6.2f} s {100 * rest / total:5.1f}%")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="clips per resolution")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--gop", type=int, default=60, help="keyframe interval of the clips")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS),
                        choices=list(RESOLUTIONS))
    parser.add_argument("--clips-dir", type=Path, default=None,
                        help="keep the encoded clips here and reuse them on later runs")
    parser.add_argument("--ref-upsample", type=int, default=0,
                        help="dlib upsampling of the reference detector (1 is the common "
                             "`detector(image, 1)`; 0, the default, is the faster reference)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile ours on one clip of the largest resolution")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    sources = grid_sources()[: args.clips]
    config = FaceConfig(frames=args.frames, size=args.size)
    ours = {threads: FacePipeline(FaceConfig(frames=args.frames, size=args.size,
                                             decode_threads=threads))
            for threads in (1, 0)}
    dlib_only = FacePipeline(FaceConfig(frames=args.frames, size=args.size, decode_threads=1,
                                        detector="dlib"))
    ref = Reference(args.frames, args.size, args.ref_upsample)
    cpus = available_cpus()
    print(f"{len(sources)} clips per resolution, {args.frames} sampled frames each, keyframe "
          f"every {args.gop} frames, {cpus} CPUs (default decoder threads: {cpus} for 1 "
          f"process, {max(1, cpus // 2)} per process for 2)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips_root = args.clips_dir or work / "clips"
        for label in args.resolutions:
            height, fps, frames = RESOLUTIONS[label]
            folder = clips_root / f"{label}-{frames}f-{fps}fps-gop{args.gop}"
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            clips = []
            for src in sources:
                dst = folder / f"{src.stem}.mp4"
                clips.append(dst if dst.exists()
                             else make_clip(src, dst, height, fps, frames, args.gop))
            print(f"{label}: {describe_clip(clips[0])} (clips ready in "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)

            def run_ours(path, pipeline):
                return len(pipeline.process(record_for(path))), args.frames

            tallies = {"reference": Tally(), "ours 1 proc, 1 dec thread": Tally(),
                       "  same, --face-detector dlib (no MTCNN)": Tally(),
                       f"ours 1 proc, {cpus} dec threads": Tally()}
            for clip in clips:  # alternate so every pipeline sees the same machine load
                tallies["reference"].add(ref, clip)
                tallies["ours 1 proc, 1 dec thread"].add(lambda p: run_ours(p, ours[1]), clip)
                tallies["  same, --face-detector dlib (no MTCNN)"].add(
                    lambda p: run_ours(p, dlib_only), clip)
                tallies[f"ours 1 proc, {cpus} dec threads"].add(
                    lambda p: run_ours(p, ours[0]), clip)
            rows = [(name, t.seconds, t.cpu, t.faces, t.frames, t.videos)
                    for name, t in tallies.items()]
            for workers in (1, 2):
                cpu = cpu_seconds()
                summary = run_preprocess([record_for(c) for c in clips],
                                         work / f"cache-{label}-{workers}", config,
                                         workers=workers, progress=False)
                cpu = cpu_seconds() - cpu
                n = summary.ok + summary.num_failed
                rows.append((f"run_preprocess w={workers}", summary.seconds, cpu,
                             summary.faces, summary.frames, n))
                rows.append((f"  w={workers} excl. start-up {summary.startup_seconds:.1f}s",
                             summary.seconds - summary.startup_seconds, None, summary.faces,
                             summary.frames, n))
            print_rows(label, rows)

        if args.profile:
            label = args.resolutions[-1]
            height, fps, frames = RESOLUTIONS[label]
            folder = clips_root / f"{label}-{frames}f-{fps}fps-gop{args.gop}"
            profile_one(ours[1], sorted(folder.glob("*.mp4"))[0])
    print(f"\ndetector stats (ours, 1 dec thread, all clips): {ours[1].detector.stats}")


def print_rows(label: str, rows: list) -> None:
    """One table block: faces/s (wall and per CPU-second), videos/s, yield, and the ratio of
    faces/s to the reference of this run and to the issue's reference figure."""
    _, ref_s, ref_cpu, ref_faces, _, _ = rows[0]
    ref_rate = ref_faces / max(ref_s, 1e-9)
    ref_cpu_rate = ref_faces / max(ref_cpu, 1e-9)
    issue = ISSUE_REFERENCE.get(label)
    print(f"{'input':6} {'pipeline':34} {'faces/s':>8} {'videos/s':>9} {'yield':>6} "
          f"{'x ref':>6} {'x issue':>8} {'faces/cpu-s':>12} {'x ref':>6}")
    for name, secs, cpu, faces, frames, videos in rows:
        rate = faces / max(secs, 1e-9)
        vs_issue = f"{rate / issue:7.1f}x" if issue else f"{'-':>8}"
        cpu_cols = (f"{faces / max(cpu, 1e-9):12.1f} {faces / max(cpu, 1e-9) / ref_cpu_rate:5.1f}x"
                    if cpu is not None else f"{'-':>12} {'-':>6}")
        print(f"{label:6} {name:34} {rate:8.1f} {videos / max(secs, 1e-9):9.2f} "
              f"{faces / max(frames, 1):6.2f} {rate / max(ref_rate, 1e-9):5.1f}x {vs_issue} "
              f"{cpu_cols}")
    if issue:
        print(f"{label:6} (issue: reference {issue} faces/s; target 8x = {8 * issue:.1f} faces/s)")
    print(flush=True)


if __name__ == "__main__":
    main()
