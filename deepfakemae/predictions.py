"""Writers of scored videos (:class:`~deepfakemae.scoring.VideoPrediction`):
``predictions.json`` (everything), ``predictions.csv`` (one row per video) and a printed table."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from deepfakemae.scoring import VideoPrediction


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def branch_labels(predictions: Sequence[VideoPrediction]) -> list[str]:
    """The branch labels of the predictions, in the order they were scored."""
    return list(dict.fromkeys(b for p in predictions for b in p.branches))


def csv_fields(labels: Sequence[str]) -> list[str]:
    """``predictions.csv`` columns: key, path, status, fake_probability, one per branch, ..."""
    return ["key", "path", "status", "fake_probability", *labels, "label", "num_faces", "error"]


def csv_row(prediction: VideoPrediction) -> dict:
    """One ``predictions.csv`` row (probabilities with 6 decimals, empty when unknown)."""
    return {"key": prediction.key, "path": prediction.path, "status": prediction.status,
            "fake_probability": _fmt(prediction.fake_probability),
            **{b: _fmt(v) for b, v in prediction.branches.items()},
            "label": prediction.label or "", "num_faces": prediction.num_faces,
            "error": prediction.error}


def write_predictions(predictions: list[VideoPrediction], output: Path) -> tuple[Path, Path]:
    """Write ``predictions.json`` (full) and ``predictions.csv`` (one row per video)."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output / "predictions.json", output / "predictions.csv"
    json_path.write_text(json.dumps([p.as_dict() for p in predictions], indent=2) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_fields(branch_labels(predictions)))
        writer.writeheader()
        writer.writerows(csv_row(p) for p in predictions)
    return json_path, csv_path


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
