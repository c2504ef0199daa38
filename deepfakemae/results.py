"""Result files of a test run: ``scores_test.csv`` (every scored frame) and the short summary."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from deepfakemae.branches import ordered_labels
from deepfakemae.metrics import ScoredSet

SCORE_COLUMNS = ("test_set", "video_key", "frame_index", "label")


def write_scores_csv(scored: dict[str, ScoredSet], path: str | Path) -> Path:
    """One row per scored frame: test set, video key, frame index, label, one column per branch
    (fake probability). Written atomically; read back with :func:`read_scores_csv`."""
    path = Path(path)
    branches = sorted({b for rows in scored.values() for b in rows.scores})
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*SCORE_COLUMNS, *branches])
        for name, rows in scored.items():
            for i, key in enumerate(rows.keys):
                writer.writerow([name, key, int(rows.frames[i]), int(rows.labels[i]),
                                 *(f"{rows.scores[b][i]:.6g}" for b in branches)])
    tmp.replace(path)
    return path


def read_scores_csv(path: str | Path) -> dict[str, ScoredSet]:
    """The test sets of a ``scores_test.csv`` written by :func:`write_scores_csv`."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if list(fields[:len(SCORE_COLUMNS)]) != list(SCORE_COLUMNS):
            raise ValueError(f"{path} is not a scores file (columns {fields}); it is written by "
                             "`deepfakemae test` as <run dir>/scores_test.csv")
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
                      f"per-frame scores: {path.with_name('scores_test.csv')}"])
