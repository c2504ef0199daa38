"""DFDC index: the training parts and the public test set.

Layout (found in ``<root>`` or one folder below it, e.g. ``<root>/dfdc_train_all/``)::

    dfdc_train_part_N/*.mp4 + metadata.json   {"x.mp4": {"label": "REAL"|"FAKE", "split": ...,
                                                           "original": "y.mp4"|null}, ...}
    <test folder>/labels.csv                  columns filename,label (1 = fake, 0 = real)
    <test folder>/[sub folders/]*.mp4         the test videos, beside labels.csv or below it

Training parts give split ``train``, the test set ``test`` (no ``val``). A metadata or label entry
whose file name is not a relative path inside its folder (``../x.mp4``, ``/abs/x.mp4``) is
skipped with a :class:`DatasetWarning` and never read: one bad entry does not block a 100k-video
dataset, and nothing outside the root is touched. Malformed JSON/CSV raises
:class:`DatasetError` naming the file (and line). Keys ``dfdc/<part>/<stem>``, ``dfdc/test/<stem>``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from data_modules.indexes.common import (
    ALL,
    VIDEO_SUFFIXES,
    DatasetError,
    finalize,
    handle_missing,
    is_safe_relative,
    preview,
    read_text,
    safe_join,
    splits_for,
    warn,
)
from deepfakemae.records import FAKE, REAL, REAL_METHOD, VideoRecord

DATASET = "dfdc"
FAKE_METHOD = "dfdc_fake"
PART_PREFIX = "dfdc_train_part_"
METADATA = "metadata.json"
TEST_LABELS = "labels.csv"
OFFERED_SPLITS = ("train", "test")
METADATA_LABELS = {"REAL": REAL, "FAKE": FAKE}
LAYOUT = "dfdc_train_part_N/ folders with metadata.json, and/or the test set's labels.csv"


def _method(label: int) -> str:
    return REAL_METHOD if label == REAL else FAKE_METHOD


def find_parts(root: Path) -> list[Path]:
    """``dfdc_train_part_*`` folders in ``root`` or one level below it, sorted by path."""
    found = [p for p in root.glob(f"{PART_PREFIX}*") if p.is_dir()]
    found += [p for p in root.glob(f"*/{PART_PREFIX}*") if p.is_dir()]
    return sorted(found)


def find_test_labels(root: Path) -> Path | None:
    """The single ``labels.csv`` in ``root`` or up to two folders below (not inside parts)."""
    found = [p for p in [root / TEST_LABELS, *root.glob(f"*/{TEST_LABELS}"),
                         *root.glob(f"*/*/{TEST_LABELS}")]
             if p.is_file() and not any(q.startswith(PART_PREFIX) for q in p.parent.parts)]
    if len(found) > 1:
        raise DatasetError(f"several DFDC test label files found: {preview([str(p) for p in found])}",
                           path=root, fix="pass test_labels=<path to the right labels.csv>")
    return found[0] if found else None


def read_metadata(path: Path) -> list[tuple[str, int]]:
    """``(file name, our label)`` pairs of one part's ``metadata.json``; unsafe names skipped."""
    try:
        data = json.loads(read_text(path, "DFDC metadata", "re-download this part's "
                                                          "metadata.json"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"malformed JSON in DFDC metadata (line {err.lineno}: {err.msg})",
                           path=path, fix="re-download this part's metadata.json") from err
    if not isinstance(data, dict):
        raise DatasetError("DFDC metadata must be a JSON object {file: {label, split, original}}",
                           path=path, fix="re-download this part's metadata.json")
    entries, unsafe = [], []
    for name, info in data.items():
        label = info.get("label") if isinstance(info, dict) else None
        if label not in METADATA_LABELS:
            raise DatasetError(f"entry {name!r} has no label REAL or FAKE (got {info!r})",
                               path=path, fix="re-download this part's metadata.json")
        if not is_safe_relative(name):
            unsafe.append(name)
            continue
        entries.append((name, METADATA_LABELS[label]))
    if unsafe:
        warn(f"{path}: skipped {len(unsafe)} entries whose file name leaves the part folder: "
             f"{preview(unsafe)}")
    return entries


def read_test_labels(path: Path) -> list[tuple[str, int]]:
    """``(file name, our label)`` pairs of the test ``labels.csv`` (1 = fake); unsafe names skipped."""
    entries: dict[str, int] = {}
    unsafe = []
    text = read_text(path, "DFDC labels.csv", "use the labels.csv shipped with the DFDC public "
                                              "test set")
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        if "filename" not in fields or "label" not in fields:
            raise DatasetError(f"DFDC labels.csv needs columns filename,label; found "
                               f"{reader.fieldnames}", path=path,
                               fix="use the labels.csv shipped with the DFDC public test set")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            name = (row[fields["filename"]] or "").strip()
            raw = (row[fields["label"]] or "").strip()
            try:
                value = float(raw)
            except ValueError:
                value = -1.0
            if value not in (0.0, 1.0) or not name:
                raise DatasetError(f"malformed row {row!r}; expected <file>,<0|1> (1 = fake)",
                                   path=where, fix="restore the official labels.csv")
            if not is_safe_relative(name):
                unsafe.append(name)
                continue
            label = FAKE if value == 1.0 else REAL
            if entries.setdefault(name, label) != label:
                raise DatasetError(f"{name} is listed with both labels", path=where,
                                   fix="restore the official labels.csv")
    if unsafe:
        warn(f"{path}: skipped {len(unsafe)} rows whose file name leaves the test folder: "
             f"{preview(unsafe)}")
    return list(entries.items())


def _locate_test_videos(folder: Path, names: list[str]) -> dict[str, Path]:
    """Find each name beside ``labels.csv``, else once anywhere below it (train parts excluded)."""
    found = {n: safe_join(folder, n, "DFDC test file name") for n in names}
    found = {n: p for n, p in found.items() if p.exists()}
    if len(found) == len(names):
        return found
    below: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(PART_PREFIX))
        for f in filenames:
            if f.lower().endswith(VIDEO_SUFFIXES):
                below.setdefault(f, []).append(Path(dirpath) / f)
    for name in names:
        if name in found:
            continue
        hits = below.get(Path(name).name, [])
        if len(hits) > 1:
            raise DatasetError(f"DFDC test video {name} found {len(hits)} times: "
                               f"{preview([str(h) for h in hits])}", path=folder,
                               fix="keep one copy of the test videos below labels.csv")
        if hits:
            found[name] = hits[0]
    return found


def index_dfdc(root: str | os.PathLike, split: str = "all",
               test_labels: str | os.PathLike | None = None,
               allow_missing: bool = False) -> list[VideoRecord]:
    """Index DFDC training parts (``train``) and the public test set (``test``).

    ``test_labels`` overrides the search for the test set's ``labels.csv``. Videos listed but
    missing on disk raise one :class:`DatasetError` unless ``allow_missing=True``.
    """
    root = Path(root)
    selected = splits_for(split, OFFERED_SPLITS, "DFDC")
    if not root.is_dir():
        raise DatasetError("DFDC root does not exist", path=root,
                           fix=f"pass the folder that holds {LAYOUT}")
    parts = find_parts(root)
    labels_path = Path(test_labels) if test_labels is not None else find_test_labels(root)
    if not parts and labels_path is None:
        raise DatasetError(f"{root} does not look like a DFDC root (no {PART_PREFIX}* folder and "
                           f"no {TEST_LABELS})", path=root, fix=f"pass the folder that holds {LAYOUT}")
    records: list[VideoRecord] = []
    missing: list[str] = []

    if "train" in selected and (parts or split != ALL):  # all: the parts that are there
        if not parts:
            handle_missing(["dfdc_train_part_*"], allow_missing, "DFDC training parts", root,
                           fix="download the training parts or use --split test")
        for part in parts:
            meta = part / METADATA
            if not meta.is_file():
                handle_missing([str(meta.relative_to(root))], allow_missing,
                               "DFDC metadata files", root, fix="re-download this part")
                continue
            on_disk = set(os.listdir(part))
            for name, label in read_metadata(meta):
                path = safe_join(part, name, "DFDC metadata file name")
                if name not in on_disk and not path.exists():
                    missing.append(str(path.relative_to(root)))
                    continue
                records.append(VideoRecord(
                    key=f"{DATASET}/{part.name}/{Path(name).stem}", path=str(path), label=label,
                    dataset=DATASET, method=_method(label), split="train"))

    if "test" in selected and (labels_path is not None or split != ALL):
        if labels_path is None or not labels_path.is_file():
            raise DatasetError("DFDC test labels.csv not found", path=labels_path or root,
                               fix="put the public test set (videos + labels.csv) under --root, "
                                   "or use --split train for the training parts only")
        entries = read_test_labels(labels_path)
        located = _locate_test_videos(labels_path.parent, [n for n, _ in entries])
        for name, label in entries:
            if name not in located:
                missing.append(name)
                continue
            records.append(VideoRecord(
                key=f"{DATASET}/test/{Path(name).stem}", path=str(located[name]), label=label,
                dataset=DATASET, method=_method(label), split="test"))

    handle_missing(missing, allow_missing, "DFDC videos listed by metadata/labels", root,
                   fix="re-download the missing videos")
    return finalize(records, DATASET)
