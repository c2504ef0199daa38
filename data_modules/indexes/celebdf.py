"""Celeb-DF v2 index.

Layout::

    <root>/Celeb-real/idX_NNNN.mp4          real (590)
    <root>/YouTube-real/NNNNN.mp4           real (300)
    <root>/Celeb-synthesis/idX_idY_NNNN.mp4 fake (5639)
    <root>/List_of_testing_videos.txt       518 lines "<label> <dir>/<file>", 1 = REAL, 0 = FAKE

The test list uses the opposite of our convention (ours: 0 real, 1 fake), so its labels are
inverted, and each is checked against the folder it names. ``test`` = the listed videos,
``train`` = every other video of the three folders (Celeb-DF has no ``val`` split).
Keys: ``celebdf/<dir>/<stem>``; method ``real`` or ``celebdf_synthesis``.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_modules.indexes.common import (
    DatasetError,
    finalize,
    handle_missing,
    is_safe_relative,
    read_text,
    scan_videos,
    splits_for,
    wrong_root,
)
from deepfakemae.records import FAKE, REAL, REAL_METHOD, VideoRecord

DATASET = "celebdf"
FAKE_METHOD = "celebdf_synthesis"
#: folder -> (our label, method)
FOLDERS = {
    "Celeb-real": (REAL, REAL_METHOD),
    "YouTube-real": (REAL, REAL_METHOD),
    "Celeb-synthesis": (FAKE, FAKE_METHOD),
}
TEST_LIST = "List_of_testing_videos.txt"
OFFERED_SPLITS = ("train", "test")
#: the list's own label convention -> ours
LIST_LABELS = {"1": REAL, "0": FAKE}


def parse_test_list(path: str | os.PathLike) -> list[tuple[str, str, int]]:
    """Parse the test list into ``(folder, file name, our label)`` triples.

    Blank lines are skipped and repeated lines kept once. Any other malformed line raises
    :class:`DatasetError` naming ``file:line``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError("Celeb-DF test list not found", path=path,
                           fix=f"Celeb-DF v2 ships {TEST_LIST} in its root; put it there or pass "
                               f"test_list=<path>")
    entries: dict[tuple[str, str], int] = {}
    text = read_text(path, "Celeb-DF test list", f"restore the official {TEST_LIST}")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        tokens = line.split()
        if len(tokens) != 2 or tokens[0] not in LIST_LABELS:
            raise DatasetError(f"malformed line {line!r}; expected '<1|0> <folder>/<file>' "
                               f"(1 = real, 0 = fake)", path=where,
                               fix="restore the official List_of_testing_videos.txt")
        rel = tokens[1]
        parts = rel.split("/")
        if not is_safe_relative(rel) or len(parts) != 2 or parts[0] not in FOLDERS:
            raise DatasetError(f"line names {rel!r}, not <folder>/<file> with a folder of "
                               f"{tuple(FOLDERS)}", path=where,
                               fix="restore the official List_of_testing_videos.txt")
        label = LIST_LABELS[tokens[0]]
        if label != FOLDERS[parts[0]][0]:
            raise DatasetError(f"label {tokens[0]} contradicts folder {parts[0]} (in this list 1 "
                               f"means real and 0 fake)", path=where,
                               fix="restore the official List_of_testing_videos.txt; do not "
                                   "invert its labels by hand")
        entries.setdefault((parts[0], parts[1]), label)
    return [(folder, name, label) for (folder, name), label in entries.items()]


def index_celebdf(root: str | os.PathLike, split: str = "all",
                  test_list: str | os.PathLike | None = None,
                  allow_missing: bool = False) -> list[VideoRecord]:
    """Index Celeb-DF v2 for ``split`` (``train``/``test``/``all``).

    ``test_list`` defaults to ``<root>/List_of_testing_videos.txt``. Listed videos missing on disk
    raise one :class:`DatasetError` unless ``allow_missing=True`` (warning, skipped).
    """
    root = Path(root)
    selected = splits_for(split, OFFERED_SPLITS, "Celeb-DF v2")
    present = [f for f in FOLDERS if (root / f).is_dir()]
    if not present:
        raise wrong_root(root, "Celeb-DF v2", "Celeb-real/, YouTube-real/, Celeb-synthesis/ and "
                         f"{TEST_LIST}", "Celeb-synthesis")
    absent = [f for f in FOLDERS if f not in present]
    handle_missing(absent, allow_missing, "Celeb-DF v2 folders", root,
                   fix="extract the full Celeb-DF v2 download into this root")
    listings = {f: scan_videos(root / f) for f in present}
    tests = parse_test_list(test_list if test_list is not None else root / TEST_LIST)
    test_stems = {(folder, Path(name).stem) for folder, name, _ in tests}

    records: list[VideoRecord] = []

    def add(folder: str, stem: str, path: Path, split_name: str) -> None:
        label, method = FOLDERS[folder]
        records.append(VideoRecord(key=f"{DATASET}/{folder}/{stem}", path=str(path), label=label,
                                   dataset=DATASET, method=method, split=split_name))

    if "test" in selected:
        missing = []
        for folder, name, _ in tests:
            stem = Path(name).stem
            if stem in listings.get(folder, {}):
                add(folder, stem, listings[folder][stem], "test")
            elif folder in present:  # an absent folder was already reported above
                missing.append(f"{folder}/{name}")
        handle_missing(missing, allow_missing, "Celeb-DF v2 test videos", root,
                       fix="extract the full Celeb-DF v2 download into this root")
    if "train" in selected:
        for folder, listing in listings.items():
            for stem, path in listing.items():
                if (folder, stem) not in test_stems:
                    add(folder, stem, path, "train")
    return finalize(records, DATASET)
