"""The scoring report: one self-contained HTML page of a ``score --output`` folder.

The page is rebuilt from the folder, never from one run's memory, so it covers every video the
folder holds (those a rerun skipped too): ``predictions.json`` (verdicts, probabilities, frame
scores), ``score.json`` (the checkpoints), ``faces/<key>.png`` (the strip of scored faces,
written by :func:`save_face_strip` while scoring with ``--report``) and
``explain/<key>/{reconstruction,cam}.png`` (``--explain``). Pictures are inlined as
``data:image/png`` URIs and the score plot is inline SVG; the page has no script and its
Content-Security-Policy forbids every fetch, so it opens offline and can be forwarded alone.

:func:`render_page` is pure (data in, HTML text out; every text HTML-escaped);
:func:`collect_videos` reads the folder; :func:`write_report` writes the page atomically as UTF-8.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from deepfakemae.branches import BRANCHES, FUSED, branch_label, ordered_labels
from deepfakemae.faces.files import atomic_write, fs_text, utf8_text
from deepfakemae.predictions import JSON_NAME, read_predictions
from deepfakemae.scoring import FrameScore, VideoPrediction
from deepfakemae.visualize import face_strip, png_bytes

#: where the per-video pictures of an output folder live
FACES_DIR, EXPLAIN_DIR = "faces", "explain"
#: the figures of a video, in page order: name -> (heading, what it shows)
FIGURES = {
    "faces": ("Faces scored", "the aligned face crops the scores came from, in frame order "
                              "(caption: frame index and fused p(fake))"),
    "reconstruction": ("Facial-part reconstructions (paper Fig. 1)",
                       "the middle face with each facial part masked and rebuilt by the "
                       "stage-1 MAE, and the reconstruction error"),
    "cam": ("Class-activation maps (paper Fig. 3)",
            "Grad-CAM of each branch over the middle face, towards the class it predicts"),
}
#: why a figure is absent
MISSING = {
    "faces": "no face strip on disk (scored without --report; scoring its input with --report "
             "into this folder again makes one)",
    "reconstruction": "not made (needs --explain and a stage-1 checkpoint, --mae-ckpt)",
    "cam": "not made (needs --explain)",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def figure_paths(output: Path, key: str) -> dict[str, Path]:
    """The picture files of video ``key`` in ``output``, by :data:`FIGURES` name (``key`` as
    scored, or as ``predictions.json`` spells it: :func:`fs_text`)."""
    key = fs_text(key)
    return {"faces": output / FACES_DIR / f"{key}.png",
            "reconstruction": output / EXPLAIN_DIR / key / "reconstruction.png",
            "cam": output / EXPLAIN_DIR / key / "cam.png"}


def save_face_strip(output: Path, crops: np.ndarray, prediction: VideoPrediction) -> Path:
    """Write ``<output>/faces/<key>.png`` (atomically): the (N,S,S,3) uint8 faces a prediction
    scored, captioned with their frame index and fused score."""
    captions = [f"f{f.frame_index} p={f.scores[FUSED]:.2f}" for f in prediction.frames]
    path = figure_paths(output, prediction.key)["faces"]
    data = png_bytes(face_strip(crops, captions))
    atomic_write(path, lambda h: h.write(data))
    return path


@dataclass
class ReportVideo:
    """One video of the page: its prediction and the PNG bytes of each figure found."""

    prediction: VideoPrediction
    pictures: dict[str, bytes] = field(default_factory=dict)


def read_png(path: Path) -> bytes | None:
    """The bytes of the PNG file ``path``; None when it is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except (OSError, ValueError):  # ValueError: a name the file system cannot spell
        return None
    return data if data.startswith(PNG_MAGIC) else None


def collect_videos(output: Path) -> list[ReportVideo]:
    """Every prediction of ``<output>/predictions.json`` with its figures from the folder;
    ``ValueError`` naming the file when it is not a predictions file."""
    videos = []
    for prediction in read_predictions(output / JSON_NAME):
        pictures = {}
        if prediction.status == "ok":
            for name, path in figure_paths(output, prediction.key).items():
                data = read_png(path)
                if data is not None:
                    pictures[name] = data
        videos.append(ReportVideo(prediction, pictures))
    return videos


def read_settings(output: Path) -> dict:
    """The ``settings`` of ``<output>/score.json`` ({} when it is missing or unreadable)."""
    try:
        settings = json.loads((output / "score.json").read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return settings if isinstance(settings, dict) else {}


# -- pure assembly -----------------------------------------------------------------------------

def esc(value: object) -> str:
    """``value`` as HTML text: lone surrogates of undecodable file names made UTF-8 text
    (:func:`utf8_text`), then ``& < > " '`` escaped."""
    return html.escape(utf8_text(str(value)), quote=True)


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def score_plot(frames: Sequence[FrameScore], labels: Sequence[str], threshold: float,
               width: int = 640, height: int = 220) -> str:
    """Inline SVG of each label's fake probability over the frame indices (fused first, bold),
    with the threshold dashed; every point carries a ``<title>`` tooltip."""
    left, right, top, bottom = 44, 12, 10, 34
    xs = [f.frame_index for f in frames]
    lo, hi = (min(xs), max(xs)) if xs else (0, 1)
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    def y(p: float) -> float:
        return top + (1.0 - p) * plot_h

    parts = [f'<svg class="score-plot" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="fake probability per frame">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text class="tick" x="{left - 6}" '
                     f'y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    ticks = sorted(set(xs)) if 0 < len(set(xs)) <= 8 else sorted(
        set(np.linspace(lo, hi, min(6, hi - lo + 1)).round().astype(int)))
    for v in ticks:
        parts.append(f'<text class="tick" x="{x(v):.1f}" y="{top + plot_h + 16}" '
                     f'text-anchor="middle">{v}</text>')
    parts.append(f'<text class="axis" x="{left + plot_w / 2:.1f}" y="{height - 3}" '
                 'text-anchor="middle">frame index</text>')
    parts.append(f'<line class="threshold" x1="{left}" x2="{left + plot_w}" '
                 f'y1="{y(threshold):.1f}" y2="{y(threshold):.1f}"><title>threshold '
                 f'{threshold:.2f}</title></line>')
    colours = {label: "#111" if label == FUSED else COLOURS[i % len(COLOURS)]
               for i, label in enumerate(labels)}
    for label in reversed(labels):  # fused drawn last, on top
        points = [(f.frame_index, f.scores[label]) for f in frames if label in f.scores]
        wide = 2.5 if label == FUSED else 1.5
        path = " ".join(f"{x(fi):.1f},{y(p):.1f}" for fi, p in points)
        parts.append(f'<polyline class="series" data-label="{esc(label)}" fill="none" '
                     f'stroke="{colours[label]}" stroke-width="{wide}" points="{path}"/>')
        parts += [f'<circle cx="{x(fi):.1f}" cy="{y(p):.1f}" r="{wide + 1}" '
                  f'fill="{colours[label]}"><title>frame {fi}: {esc(label)} {p:.3f}</title>'
                  '</circle>' for fi, p in points]
    parts.append(f'<rect class="frame" x="{left}" y="{top}" width="{plot_w}" '
                 f'height="{plot_h}"/></svg>')
    legend = "".join(f'<span class="key"><i style="background:{colour}"></i>{esc(label)}'
                     '</span>' for label, colour in colours.items())
    return "".join(parts) + f'<div class="legend">{legend}<span class="key"><i class="dash">' \
                            f'</i>threshold {threshold:.2f}</span></div>'


def branch_names(settings: dict) -> dict[str, tuple[str, str, str]]:
    """Score label -> (branch name, title, checkpoint path) from ``score.json`` settings."""
    names = {}
    for name, ckpt in (settings.get("checkpoints") or {}).items():
        title = BRANCHES[name].title if name in BRANCHES else f"extra branch {name}"
        path = ckpt.get("path", "") if isinstance(ckpt, dict) else str(ckpt)
        names[branch_label(name)] = (name, title, path)
    return names


def _figure(name: str, video: ReportVideo, index: int) -> str:
    heading, what = FIGURES[name]
    png = video.pictures.get(name)
    if png is None:
        return (f'<figure class="{name} missing"><figcaption><b>{esc(heading)}</b>: '
                f'{esc(MISSING[name])}</figcaption></figure>')
    return (f'<figure class="{name}"><div class="scroll"><img class="{name}" '
            f'alt="{esc(heading)} of video {index}" src="{data_uri(png)}"></div>'
            f'<figcaption><b>{esc(heading)}</b>: {esc(what)}</figcaption></figure>')


def _video(video: ReportVideo, index: int, labels: list[str],
           names: dict[str, tuple[str, str, str]], threshold: float) -> str:
    p = video.prediction
    rows = "".join(
        f'<tr><th>{esc(label)}</th><td>{esc(names.get(label, (label, label, ""))[1])}</td>'
        f'<td class="num">{_p(p.branches.get(label))}</td></tr>' for label in labels)
    note = f'<p class="note">note: {esc(p.note)}</p>' if p.note else ""
    return (f'<article class="video" id="video-{index}" data-key="{esc(p.key)}" '
            f'data-verdict="{esc(p.label)}">'
            f'<h3>{esc(p.key)} <span class="verdict {esc(p.label)}">{esc(p.label)}</span></h3>'
            f'<p class="path">{esc(p.path)}</p>'
            f'<p class="fused">fused p(fake) <b>{_p(p.fake_probability)}</b> (threshold '
            f'{threshold:.2f}) from {p.num_faces} face(s)</p>{note}'
            f'<table class="branches"><tr><th>label</th><th>branch</th><th>p(fake)</th></tr>'
            f'{rows}</table>'
            f'<figure class="plot">{score_plot(p.frames, [FUSED, *labels], threshold)}'
            f'<figcaption><b>Score per frame</b>: each branch\'s fake probability of every '
            f'sampled frame with a face, and the fused mean</figcaption></figure>'
            + "".join(_figure(name, video, index) for name in FIGURES) + "</article>")


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:16px 24px;color:#1b1b1b;background:#fff}
h1{font-size:24px;margin:8px 0}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:28px}h3{font-size:17px;margin:0 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}
.video{border:1px solid #ccc;border-radius:6px;padding:12px 16px;margin:16px 0}
.verdict{font-size:13px;padding:2px 8px;border-radius:10px;color:#fff;background:#777;
vertical-align:middle}.verdict.fake{background:#c62828}.verdict.real{background:#2e7d32}
.path,.note,.meta{color:#555;font-size:13px;word-break:break-all}.note{color:#8a5a00}
figure{margin:10px 0}figcaption{font-size:13px;color:#444}.missing figcaption{color:#8a5a00}
.scroll{overflow-x:auto}img{display:block;max-width:100%;height:auto}img.faces{max-width:none}
svg{max-width:100%;height:auto}.grid{stroke:#e3e3e3}.frame{fill:none;stroke:#999}
.threshold{stroke:#c62828;stroke-dasharray:5 4}.tick,.axis{font-size:11px;fill:#555}
.legend{font-size:12px}.key{margin-right:14px}.key i{display:inline-block;width:18px;height:3px;
margin-right:4px;vertical-align:middle}.key i.dash{border-top:2px dashed #c62828;height:0}
code,pre{font:12px/1.4 ui-monospace,monospace;background:#f5f5f5}pre{padding:8px;
white-space:pre-wrap;word-break:break-all}
"""

#: no script, no fetch of any kind: pictures come as data: URIs, styles are inline
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def render_page(videos: Sequence[ReportVideo], settings: dict, threshold: float, run: dict,
                skipped: Sequence[tuple[str, str]] = (), written: str | None = None) -> str:
    """The whole HTML page (text) for ``videos``.

    ``settings``: what ``score.json`` records (checkpoints, frames, crop size, landmarks, face
    detector); ``run``: :func:`deepfakemae.runinfo.run_info` of the command writing the page;
    ``skipped``: (path, why) of inputs that are not videos; ``written``: the time shown.
    """
    written = written or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    names = branch_names(settings)
    labels = [b for b in ordered_labels(
        {*names, *(b for v in videos for b in v.prediction.branches)}) if b != FUSED]
    scored = [v for v in videos if v.prediction.status == "ok"]
    failed = [v for v in videos if v.prediction.status != "ok"]
    fakes = sum(v.prediction.label == "fake" for v in scored)
    summary = "".join(
        f'<tr><td><a href="#video-{i}">{esc(v.prediction.key)}</a></td>'
        f'<td><span class="verdict {esc(v.prediction.label)}">{esc(v.prediction.label)}</span>'
        f'</td><td class="num">{_p(v.prediction.fake_probability)}</td>'
        + "".join(f'<td class="num">{_p(v.prediction.branches.get(b))}</td>' for b in labels)
        + f'<td class="num">{v.prediction.num_faces}</td></tr>'
        for i, v in enumerate(scored, 1))
    heads = "".join(f"<th>{esc(b)}</th>" for b in labels)
    models = "".join(f'<tr><th>{esc(label)}</th><td>{esc(name)}</td><td>{esc(title)}</td>'
                     f'<td><code>{esc(path)}</code></td></tr>'
                     for label, (name, title, path) in names.items())
    options = ", ".join(f"{k.replace('_', ' ')} {esc(settings[k])}"
                        for k in ("frames", "crop_size", "landmarks", "detector") if k in settings)
    unscored = "".join(
        f'<tr class="unscored" data-key="{esc(v.prediction.key)}"><td>{esc(v.prediction.key)}'
        f'</td><td class="path">{esc(v.prediction.path)}</td><td>{esc(v.prediction.status)}'
        f'</td><td class="reason">{esc(v.prediction.error)}</td></tr>' for v in failed)
    not_videos = "".join(f'<tr><td class="path">{esc(path)}</td><td>{esc(why)}</td></tr>'
                         for path, why in skipped)
    git = run.get("git") or {}
    commit = git.get("commit") or "unknown (not a git checkout)"
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    packages = ", ".join(f"{esc(n)} {esc(v)}" for n, v in (run.get("packages") or {}).items()
                         if v is not None)
    command = shlex.join(utf8_text([str(a) for a in run.get("argv") or []]))
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>DeepfakeMAE scoring report ({len(videos)} videos)</title>",
        f"<style>{STYLE}</style></head><body>",
        "<header><h1>DeepfakeMAE scoring report</h1>",
        f'<p class="meta">{len(videos)} input(s): {fakes} fake, {len(scored) - fakes} real, '
        f"{len(failed)} not scored · a video is fake when its fused p(fake) ≥ {threshold:.2f} · "
        f"written {esc(written)}</p></header>",
        '<section id="summary"><h2>Verdicts</h2>',
        f'<table><tr><th>video</th><th>verdict</th><th>{FUSED}</th>{heads}<th>faces</th></tr>'
        f"{summary}</table>" if scored else "<p>No video was scored.</p>",
        '</section><section id="models"><h2>Models</h2>',
        "<p>The fused p(fake) is the mean of the branches' probabilities; a branch's is the "
        "mean over the video's sampled frames with a face.</p>",
        f"<table><tr><th>label</th><th>branch</th><th>network</th><th>checkpoint</th></tr>"
        f"{models}</table><p class=\"meta\">{options}</p>",
        '</section><section id="videos"><h2>Videos</h2>',
        *(_video(v, i, labels, names, threshold) for i, v in enumerate(scored, 1)),
        "</section>",
        f'<section id="unscored"><h2>Not scored ({len(failed)})</h2>',
        f"<table><tr><th>video</th><th>path</th><th>status</th><th>reason</th></tr>{unscored}"
        "</table>" if failed else "<p>Every input was scored.</p>",
        "</section>",
    ]
    if not_videos:
        parts.append(f'<section id="skipped"><h2>Skipped inputs ({len(skipped)})</h2>'
                     "<p>Paths of this run's input that are not videos or frame folders.</p>"
                     f"<table><tr><th>path</th><th>why</th></tr>{not_videos}</table></section>")
    parts.append(
        '<section id="provenance"><h2>How this page was made</h2>'
        f"<p>Command:</p><pre>{esc(command)}</pre>"
        f"<p>Code: commit <code>{esc(commit)}</code>{dirty}; Python {esc(run.get('python'))} "
        f"on {esc(run.get('platform'))}.</p><p class=\"meta\">{packages}</p>"
        "<p class=\"meta\">Videos kept from earlier runs into the same output folder were "
        "scored with the same models and settings (the output folder's score.json).</p>"
        "</section></body></html>\n")
    return "".join(parts)


def write_report(path: Path, output: Path, threshold: float, run: dict,
                 skipped: Sequence[tuple[str, str]] = ()) -> Path:
    """Rebuild the page of the ``output`` folder and write it to ``path`` (atomically, UTF-8)."""
    page = render_page(collect_videos(output), read_settings(output), threshold, run, skipped)
    atomic_write(path, lambda h: h.write(page.encode("utf-8")))
    return path
