"""``deepfakemae score --report``: the page, rendered by a real headless Chromium (Debian's
``chromium``, installed by ``make setup`` where apt-get is available): no console message (a
script, a fetch or a CSP violation would log one), a screenshot that is not one colour, and a DOM
holding each video's verdict, plot and pictures and each unscoreable input with its reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_stage2 import trained  # noqa: F401  (module fixture: micro stage 1 + both branches)

from deepfakemae.cli import main
from deepfakemae.score_report import ReportVideo, render_page
from deepfakemae.scoring import FrameScore, VideoPrediction

GRID = Path(__file__).resolve().parents[1] / "deepfakemae" / "assets" / "grid"  # bundled clips
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome"))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: `make setup` installs it as root where "
                             "apt-get is available (apt-get install chromium)")


def render(page: Path, tmp_path: Path, size: str = "1200,1600") -> tuple[str, list[str], Path]:
    """(rendered DOM, console lines, screenshot path) of ``page`` in headless Chromium."""
    shot = tmp_path / "screenshot.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
         "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--dump-dom",
         f"--window-size={size}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console, shot


class Dom(HTMLParser):
    """What the tests look for in a rendered page: per ``article.video`` its key, verdict, and
    the (tag, class, src) of its pictures; per ``tr.unscored`` its key and reason text."""

    def __init__(self, text: str):
        super().__init__()
        self.videos: dict[str, dict] = {}
        self.unscored: dict[str, str] = {}
        self._video: dict | None = None
        self._row: str | None = None
        self._in_reason = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "article" and "video" in classes:
            self._video = {"verdict": a.get("data-verdict"), "pictures": []}
            self.videos[a["data-key"]] = self._video
        elif tag in ("svg", "img") and self._video is not None:
            self._video["pictures"].append((tag, a.get("class"), a.get("src", "")))
        elif tag == "tr" and "unscored" in classes:
            self._row = a["data-key"]
            self.unscored[self._row] = ""
        elif tag == "td" and "reason" in classes:
            self._in_reason = True

    def handle_endtag(self, tag):
        if tag == "article":
            self._video = None
        elif tag == "td":
            self._in_reason = False

    def handle_data(self, data):
        if self._in_reason and self._row is not None:
            self.unscored[self._row] += data


def not_one_colour(png: Path) -> float:
    """The screenshot's pixel standard deviation (0 for a blank page)."""
    image = cv2.imread(str(png))
    assert image is not None and image.shape[0] > 100, png
    return float(image.std())


def test_file_names_are_escaped_and_missing_figures_named():
    hostile = '<img src=x onerror="alert(1)">&\udcc3\udca9'  # markup and an undecodable name
    frames = [FrameScore(i, [0, 0, 1, 1], {"fused": 0.6, "F": 0.7, "M": 0.5}) for i in (0, 3)]
    video = VideoPrediction(hostile, f"/v/{hostile}.mp4", fake_probability=0.6,
                            branches={"F": 0.7, "M": 0.5}, label="fake", num_faces=2,
                            frames=frames)
    failed = VideoPrediction("b", "/v/b.mp4", "unreadable", f"cannot decode {hostile}")
    page = render_page([ReportVideo(video), ReportVideo(failed)], {}, 0.5,
                       {"argv": ["deepfakemae", "score", "--video", hostile]})
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert "&amp;é" in page and page.encode("utf-8")  # the name's UTF-8 bytes, as text
    assert "no face strip on disk" in page and "not made (needs --explain)" in page
    assert page.count('class="score-plot"') == 1 and "<script" not in page


@pytest.mark.slow
@needs_chromium
def test_report_renders_every_video_of_the_folder(trained, tmp_path, capsys):  # noqa: F811
    videos = tmp_path / "vidéos <1>"
    videos.mkdir()
    (videos / "bbaf2n.mpg").symlink_to(GRID / "bbaf2n.mpg")
    (videos / "broken & bad.mp4").write_text("this is not a video\n")
    (videos / "notes.txt").write_text("not an input\n")
    out, page = tmp_path / "out", tmp_path / "report.html"
    common = ["--run-dir", str(trained / "runs"), "--output", str(out), "--frames", "4",
              "--device", "cpu", "--no-progress", "--report", str(page)]
    assert main(["score", "--video", str(videos), "--explain", *common]) == 1  # one unreadable
    assert f"report {page}" in capsys.readouterr().out
    assert "notes.txt" in page.read_text(encoding="utf-8")  # listed as skipped by this run
    # a second run into the same folder, of another clip and without --explain: the page is
    # rebuilt from the folder, so it still shows the first run's videos and figures
    assert main(["score", "--video", str(GRID / "lbax4n.mpg"), *common]) == 0
    by_key = {p["key"]: p for p in json.loads((out / "predictions.json").read_text())}
    assert set(by_key) == {"bbaf2n", "lbax4n", "broken & bad"}

    dom_text, console, shot = render(page, tmp_path)
    assert console == [], "\n".join(console)
    assert not_one_colour(shot) > 10
    dom = Dom(dom_text)
    assert set(dom.videos) == {"bbaf2n", "lbax4n"}
    for key, video in dom.videos.items():
        assert video["verdict"] == by_key[key]["label"] in ("fake", "real")
        kinds = {(tag, cls) for tag, cls, _ in video["pictures"]}
        assert ("svg", "score-plot") in kinds and ("img", "faces") in kinds
        assert all(src.startswith("data:image/png;base64,")
                   for tag, _, src in video["pictures"] if tag == "img")
    assert {cls for _, cls, _ in dom.videos["bbaf2n"]["pictures"]} >= {"reconstruction", "cam"}
    assert {cls for _, cls, _ in dom.videos["lbax4n"]["pictures"]} == {"score-plot", "faces"}
    assert set(dom.unscored) == {"broken & bad"}
    assert "broken & bad.mp4" in dom.unscored["broken & bad"]  # the reason names the file
    assert "notes.txt" not in dom_text  # the second run's input had no skipped path
    raw = page.read_bytes().decode("utf-8")  # UTF-8, file names escaped
    assert "vidéos &lt;1&gt;" in raw and "broken &amp; bad.mp4" in raw
    strip = cv2.imread(str(out / "faces" / "lbax4n.png"))
    faces = by_key["lbax4n"]["num_faces"]
    assert strip.shape == (96 + 20, faces * 96, 3) and float(strip.std()) > 20  # faces, captions

    capsys.readouterr()
    (out / "faces" / "lbax4n.png").unlink()  # a kept video without its strip is scored again
    assert main(["score", "--video", str(GRID / "lbax4n.mpg"), *common]) == 0
    assert "already scored" not in capsys.readouterr().err
    assert (out / "faces" / "lbax4n.png").is_file()


@needs_chromium
def test_a_hostile_file_name_renders_without_console_messages(tmp_path):
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", crops[0])
    assert ok
    hostile = '<img src="http://127.0.0.1:9/x.png" onerror="alert(1)">'
    video = VideoPrediction(hostile, hostile, fake_probability=0.2, branches={"F": 0.2},
                            label="real", num_faces=1,
                            frames=[FrameScore(0, [0, 0, 1, 1], {"fused": 0.2, "F": 0.2})])
    page = tmp_path / "page.html"
    page.write_text(render_page([ReportVideo(video, {"faces": png.tobytes()})], {}, 0.5, {}),
                    encoding="utf-8")
    dom_text, console, shot = render(page, tmp_path, "800,600")
    assert console == [], "\n".join(console)  # an unescaped name would fetch and run script
    assert Dom(dom_text).videos[hostile]["verdict"] == "real" and not_one_colour(shot) > 10


def test_a_report_path_that_cannot_be_written_is_a_usage_error(tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("a file\n")
    runs = ["--run-dir", str(tmp_path / "no_runs"), "--output", str(tmp_path / "out")]
    for page, says in ((tmp_path, "is a folder; pass the HTML file"),
                       (taken / "r.html", f"{taken} is a file, not a folder")):
        argv = ["score", "--video", str(GRID / "lbax4n.mpg"), "--report", str(page), *runs]
        assert main(argv) == 2  # before any model is looked for
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--report {page}" in err and says in err, err
    assert not (tmp_path / "out").exists()
