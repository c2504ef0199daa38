"""Writers of scored videos (:class:`~deepfakemae.scoring.VideoPrediction`):
``predictions.json`` (everything), ``predictions.csv`` (one row per video) and a printed table."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from deepfakemae.faces.files import atomic_write, utf8_text
from deepfakemae.scoring import VideoPrediction

JSON_NAME, CSV_NAME = "predictions.json", "predictions.csv"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def branch_labels(predictions: Sequence[VideoPrediction]) -> list[str]:
    """The branch labels of the predictions, in the order they were scored."""
    return list(dict.fromkeys(b for p in predictions for b in p.branches))


def csv_fields(labels: Sequence[str]) -> list[str]:
    """``predictions.csv`` columns: key, path, status, fake_probability, one per branch, ..."""
    return ["key", "path", "status", "fake_probability", *labels, "label", "num_faces", "error",
            "note"]


def csv_row(prediction: VideoPrediction) -> dict:
    """One ``predictions.csv`` row (probabilities with 6 decimals, empty when unknown)."""
    return {"key": prediction.key, "path": prediction.path, "status": prediction.status,
            "fake_probability": _fmt(prediction.fake_probability),
            **{b: _fmt(v) for b, v in prediction.branches.items()},
            "label": prediction.label or "", "num_faces": prediction.num_faces,
            "error": prediction.error, "note": prediction.note}


def write_predictions(predictions: list[VideoPrediction], output: Path) -> tuple[Path, Path]:
    """Write ``predictions.json`` (full) and ``predictions.csv`` (one row per video), each
    atomically and as UTF-8 whatever the locale (file names decoded under ``LC_ALL=C`` are
    written as the text they spell, see :func:`utf8_text`)."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output / JSON_NAME, output / CSV_NAME
    data = json.dumps(utf8_text([p.as_dict() for p in predictions]), indent=2,
                      ensure_ascii=False) + "\n"
    atomic_write(json_path, lambda h: h.write(data.encode("utf-8")))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=csv_fields(branch_labels(predictions)))
    writer.writeheader()
    writer.writerows(utf8_text(csv_row(p)) for p in predictions)
    atomic_write(csv_path, lambda h: h.write(table.getvalue().encode("utf-8")))
    return json_path, csv_path


def read_predictions(path: Path) -> list[VideoPrediction]:
    """The predictions of a ``predictions.json``; ``ValueError`` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError("not a JSON list")
        return [VideoPrediction.from_dict(d) for d in data]
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a predictions file ({exc})") from exc


class PredictionsFile:
    """The predictions of one ``--output`` folder, rewritten (atomically) as they come in, so
    that an interrupted run keeps every video it finished.

    ``predictions`` starts from ``earlier`` (key -> prediction); :meth:`add` replaces a key's
    prediction and writes both files unless the last write was under ``patience`` times its
    own duration ago (a 10,000-video run does not spend its time rewriting JSON);
    :meth:`flush` writes now. Files list ``order`` keys first, then any others.
    """

    def __init__(self, output: Path, order: Sequence[str],
                 earlier: dict[str, VideoPrediction] | None = None, patience: float = 10.0):
        self.output = output
        self.predictions: dict[str, VideoPrediction] = dict(earlier or {})
        self.order = list(order)
        self.patience = patience
        self._last_write = float("-inf")
        self._write_seconds = 0.0

    def ordered(self) -> list[VideoPrediction]:
        """The predictions in ``order`` first, then the others in their earlier order."""
        first = [self.predictions[k] for k in self.order if k in self.predictions]
        wanted = set(self.order)
        return first + [p for k, p in self.predictions.items() if k not in wanted]

    def add(self, prediction: VideoPrediction) -> None:
        """Record ``prediction`` (and write, unless a write was just made)."""
        self.predictions[prediction.key] = prediction
        if time.monotonic() - self._last_write >= self.patience * self._write_seconds:
            self.flush()

    def flush(self) -> tuple[Path, Path]:
        """Write ``predictions.json`` and ``predictions.csv`` now."""
        start = time.monotonic()
        paths = write_predictions(self.ordered(), self.output)
        self._last_write = time.monotonic()
        self._write_seconds = self._last_write - start
        return paths


def print_table(predictions: list[VideoPrediction], out: TextIO | None = None) -> None:
    """A compact fixed-width table of the predictions (to ``out``, default stdout)."""
    out = out if out is not None else sys.stdout
    labels = branch_labels(predictions)
    width = max([len("video")] + [len(p.key) for p in predictions])
    heads = " ".join(f"{b:>6}" for b in labels)
    print(f"{'video':<{width}}  {'status':<10} {'p(fake)':>7} {heads}  {'label':<5} "
          f"{'faces':>5}", file=out)

    def num(v: float | None, w: int) -> str:
        return f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}"

    for p in predictions:
        cells = " ".join(num(p.branches.get(b), 6) for b in labels)
        print(f"{p.key:<{width}}  {p.status:<10} {num(p.fake_probability, 7)} "
              f"{cells}  {p.label or '-':<5} {p.num_faces:>5}", file=out)
