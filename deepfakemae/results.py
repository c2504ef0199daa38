"""Result files of a test run: ``results_test.json`` (every metric, with the run's provenance),
``scores_test.csv`` (every scored frame) and the short summary. Both files are written
atomically; :func:`read_results` checks a results file before anything counts it."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfakemae.branches import ordered_labels
from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import atomic_path, atomic_write_text
from deepfakemae.metrics import ScoredSet
from deepfakemae.rundir import SCORES_FILE

SCORE_COLUMNS = ("test_set", "video_key", "frame_index", "label")
#: the key of ``results_test.json`` that holds where the results come from (not a test set)
PROVENANCE = "_provenance"


class ResultsError(DeepfakeMAEError, ValueError):
    """A results file that cannot be counted; the message names the file and the fix."""


@dataclass
class Results:
    """A checked ``results_test.json``: ``sets`` {test set: {metric: value}} and ``provenance``
    ({plan, variant, config_hash, ...}; empty for files written before provenance existed)."""

    sets: dict[str, dict[str, float]]
    provenance: dict


def write_results(results: dict[str, dict[str, float]], path: str | Path,
                  provenance: dict | None = None) -> Path:
    """Write ``results_test.json`` atomically: the test sets' metrics plus ``_provenance``."""
    path = Path(path)
    data = {**results, PROVENANCE: dict(provenance or {})}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
    return path


def read_results(path: str | Path, fix: str = "rerun the test that writes it") -> Results:
    """The checked contents of a results file; :class:`ResultsError` naming ``path`` and
    ``fix`` when it is missing, unreadable, not JSON, empty or holds a non-numeric metric."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path} cannot be read ({exc}); {fix}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc.msg}, line {exc.lineno})"
        raise ResultsError(f"{path} {what} (truncated?); {fix}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path} holds a JSON {type(data).__name__}, not {{test set: "
                           f"{{metric: value}}}}; {fix}")
    provenance = data.pop(PROVENANCE, {})
    if not isinstance(provenance, dict):
        raise ResultsError(f"{path}: `{PROVENANCE}` is not a mapping; {fix}")
    if not data:
        raise ResultsError(f"{path} holds no test set; {fix}")
    for name, metrics in data.items():
        if not isinstance(metrics, dict) or not metrics:
            raise ResultsError(f"{path}: test set {name!r} holds {metrics!r}, not "
                               f"{{metric: value}}; {fix}")
        for metric, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ResultsError(f"{path}: {name}/{metric} is {value!r}, not a number; {fix}")
    return Results(data, provenance)


def write_scores_csv(scored: dict[str, ScoredSet], path: str | Path) -> Path:
    """One row per scored frame: test set, video key, frame index, label, one column per branch
    (fake probability). Written atomically; read back with :func:`read_scores_csv`."""
    path = Path(path)
    branches = sorted({b for rows in scored.values() for b in rows.scores})
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*SCORE_COLUMNS, *branches])
        for name, rows in scored.items():
            for i, key in enumerate(rows.keys):
                writer.writerow([name, key, int(rows.frames[i]), int(rows.labels[i]),
                                 *(f"{rows.scores[b][i]:.6g}" for b in branches)])
    return path


def read_scores_csv(path: str | Path) -> dict[str, ScoredSet]:
    """The test sets of a ``scores_test.csv`` written by :func:`write_scores_csv`."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if list(fields[:len(SCORE_COLUMNS)]) != list(SCORE_COLUMNS):
            raise ValueError(f"{path} is not a scores file (columns {fields}); it is written by "
                             f"`deepfakemae test` as <run dir>/{SCORES_FILE}")
        branches = fields[len(SCORE_COLUMNS):]
        rows: dict[str, list[dict]] = defaultdict(list)
        for row in reader:
            rows[row["test_set"]].append(row)
    return {name: ScoredSet(
        keys=[r["video_key"] for r in items],
        frames=np.array([int(r["frame_index"]) for r in items], dtype=np.int64),
        labels=np.array([int(r["label"]) for r in items], dtype=np.int64),
        scores={b: np.array([float(r[b]) for r in items]) for b in branches})
        for name, items in rows.items()}


def summary_table(results: dict[str, dict[str, float]], path: Path) -> str:
    """A short Markdown summary of a test: video-level AUC per test set and branch, the number
    of videos, and where the full results are."""
    found = {k.rsplit("/", 1)[0] for m in results.values() for k in m if k.endswith("/auc")}
    branches = ordered_labels(found)
    lines = ["| test set | " + " | ".join(f"{b} AUC" for b in branches) + " | videos |",
             "|---|" + "---|" * (len(branches) + 1)]
    for name, metrics in sorted(results.items()):
        cells = [f"{metrics.get(f'{b}/auc', float('nan')):.4f}" for b in branches]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {int(metrics.get('num_videos', 0))} |")
    return "\n".join(["", *lines, f"full results (every metric, frame and video level): {path}",
                      f"per-frame scores: {path.with_name(SCORES_FILE)}"])
