"""FaceForensics++ index over the layout as downloaded.

Layout (``<root>`` is the download folder)::

    original_sequences/youtube/<comp>/videos/NNN.mp4                 real, NNN = 000..999
    manipulated_sequences/<Method>/<comp>/videos/T_S.mp4             fake, target T, source S
    original_sequences/actors/<comp>/videos/<actor>__<scene>.mp4     DeepFakeDetection reals
    manipulated_sequences/DeepFakeDetection/<comp>/videos/<t>_<s>__<scene>__<8 chars>.mp4

Official splits are JSON lists of id pairs; a pair ``[a, b]`` owns the reals ``a`` and ``b`` and
the fakes ``a_b`` and ``b_a`` of every method. DeepFakeDetection (DFD) has no official split: its
actor reals and fakes all go to the split named by ``dfd_split`` (default ``"test"``, the usual
use of DFD as an extra test set); they are listed only when ``"DeepFakeDetection"`` is among
``methods``. A video folder may hold frame folders (``videos/000/0001.png``) instead of videos.

Keys: ``ffpp/<comp>/real/<id>``, ``ffpp/<comp>/<Method>/<T>_<S>``,
``ffpp/<comp>/actors/<stem>`` (DFD reals) and ``ffpp/<comp>/DeepFakeDetection/<stem>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from data_modules.indexes.common import (
    SPLITS,
    DatasetError,
    finalize,
    handle_missing,
    scan_videos,
    splits_for,
    warn,
    wrong_root,
)
from deepfakemae.records import FAKE, REAL, REAL_METHOD, VideoRecord
from deepfakemae.synth.methods import DEMO_METHODS, DEMO_SOURCES_FILE, split_strength

DATASET = "ffpp"
DEFAULT_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
DFD = "DeepFakeDetection"
OPTIONAL_METHODS = ("FaceShifter", DFD)
KNOWN_METHODS = DEFAULT_METHODS + OPTIONAL_METHODS + DEMO_METHODS
COMPRESSIONS = ("raw", "c23", "c40")
LAYOUT = ("original_sequences/youtube/<comp>/videos/NNN.mp4 and "
          "manipulated_sequences/<Method>/<comp>/videos/T_S.mp4")
DOWNLOAD_FIX = ("download them with the official FaceForensics++ script "
                "(faceforensics_download_v4.py -d <Method> -c <comp> -t videos)")

Pair = tuple[str, str]


def _split_source(split: str, splits_dir: str | os.PathLike | None) -> tuple[str, str]:
    """(text, where) of one split file: ``<splits_dir>/<split>.json`` or the packaged copy."""
    if splits_dir is not None:
        path = Path(splits_dir) / f"{split}.json"
        if not path.is_file():
            raise DatasetError(f"FF++ split file {split}.json not found", path=path,
                               fix="splits_dir must hold train.json, val.json and test.json")
        return path.read_text(encoding="utf-8"), str(path)
    res = resources.files("data_modules").joinpath("splits", f"{split}.json")
    return res.read_text(encoding="utf-8"), str(res)


def load_split_pairs(split: str, splits_dir: str | os.PathLike | None = None) -> list[Pair]:
    """The id pairs of one FF++ split (``train``/``val``/``test``) from JSON.

    Default: the official splits packaged in ``data_modules/splits``. Raises
    :class:`DatasetError` naming the file for malformed JSON or entries that are not id pairs.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    text, where = _split_source(split, splits_dir)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"malformed JSON in FF++ split file (line {err.lineno}: {err.msg})",
                           path=where, fix="restore the file from the official FF++ repository") from err
    if not isinstance(data, list):
        raise DatasetError("FF++ split file must hold a JSON list of id pairs", path=where,
                           fix='use the official format: [["071", "054"], ...]')
    pairs: list[Pair] = []
    for i, item in enumerate(data):
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, str) and x.isdigit() for x in item)):
            raise DatasetError(f"entry {i} of the FF++ split file is {item!r}, not a pair of "
                               f"id strings", path=where, fix='entries look like ["071", "054"]')
        pairs.append((item[0], item[1]))
    return pairs


def load_splits(splits_dir: str | os.PathLike | None = None) -> dict[str, list[Pair]]:
    """All three splits; raises :class:`DatasetError` if an id appears in two splits."""
    splits = {s: load_split_pairs(s, splits_dir) for s in SPLITS}
    owner: dict[str, str] = {}
    for split, pairs in splits.items():
        for vid in (v for pair in pairs for v in pair):
            if owner.setdefault(vid, split) != split:
                where = splits_dir if splits_dir is not None else "packaged data_modules/splits"
                raise DatasetError(f"FF++ id {vid} is in both {owner[vid]} and {split}",
                                   path=where, fix="each id must belong to exactly one split")
    return splits


def pair_videos(pair: Pair) -> tuple[list[str], list[str]]:
    """(real ids, fake stems) owned by a pair: ``[a, b] -> ([a, b], [a_b, b_a])``."""
    a, b = pair
    return [a, b], [f"{a}_{b}", f"{b}_{a}"]


def split_owner(splits: dict[str, list[Pair]]) -> dict[str, str]:
    """id -> split name, from split pairs (``load_splits``' result or cross-validation folds)."""
    return {vid: split for split, pairs in splits.items() for pair in pairs for vid in pair}


def key_split(key: str, owner: dict[str, str]) -> str | None:
    """The split an FF++-layout video key falls in under ``owner`` (``split_owner``).

    ``.../real/<id>`` belongs to its id's split; ``.../<Method>/<T>_<S>`` to the split that owns
    both T and S (``"unassigned"`` when they differ or are not listed, so that no fake can leak
    an identity across splits). Keys that are not pair-based (DeepFakeDetection, actors) give
    ``None``: their recorded split stands.
    """
    parts = key.split("/")
    if len(parts) < 2 or parts[-2] in ("actors", DFD):
        return None
    if parts[-2] == REAL_METHOD:
        return owner.get(parts[-1], "unassigned")
    ids = parts[-1].split("_")
    if len(ids) != 2:
        return None
    target, source = (owner.get(i) for i in ids)
    return target if target is not None and target == source else "unassigned"


def target_real_key(key: str) -> str | None:
    """The real video a pair-based FF++ fake was made on: ``<p>/<Method>/<T>_<S>`` →
    ``<p>/real/<T>`` (the fake shows T's frames with a manipulated face); ``None`` otherwise."""
    parts = key.split("/")
    if len(parts) < 2 or parts[-2] in (REAL_METHOD, "actors", DFD):
        return None
    ids = parts[-1].split("_")
    if len(ids) != 2 or not all(i.isdigit() for i in ids):
        return None
    return "/".join([*parts[:-2], REAL_METHOD, ids[0]])


def _is_known(method: str) -> bool:
    """An FF++ or demo method, or a demo method at an artifact strength (``LipsSwap@s2``)."""
    try:
        return split_strength(method)[0] in KNOWN_METHODS
    except ValueError:
        return False


def parse_methods(methods: Sequence[str] | str | None) -> tuple[str, ...]:
    """Validate ``methods`` (a list or a comma-separated string; ``None`` = the four defaults).
    Demo methods may carry an artifact strength: ``FaceSwapWarp@s3``."""
    if methods is None:
        return DEFAULT_METHODS
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in methods if not _is_known(m)]
    if unknown:
        raise ValueError(f"unknown FF++ method(s) {unknown}; known: {KNOWN_METHODS}, and a demo "
                         f"method at artifact strength k: <method>@s<k>, k in 1..3")
    return tuple(dict.fromkeys(methods))


def group_by_strength(records: Sequence[VideoRecord]) -> dict[str, dict[int, list[VideoRecord]]]:
    """Fake records grouped by base method, then artifact strength:
    ``{"FaceSwapWarp": {0: [...], 3: [...]}, ...}`` (a method without a strength mark is
    strength 0; reals are left out, they belong to every group). Methods and strengths sorted."""
    groups: dict[str, dict[int, list[VideoRecord]]] = {}
    for record in records:
        if record.label == REAL:
            continue
        base, strength = split_strength(record.method)
        groups.setdefault(base, {}).setdefault(strength, []).append(record)
    return {m: dict(sorted(groups[m].items())) for m in sorted(groups)}


def _videos_dir(root: Path, kind: str, compression: str, allow_missing: bool) -> Path | None:
    """``<root>/<kind>/<comp>/videos`` or an error (``None`` + warning with ``allow_missing``)."""
    folder = root / kind / compression / "videos"
    if folder.is_dir():
        return folder
    if allow_missing:
        warn(f"FF++ folder {folder} is missing; its videos are skipped (allow_missing=True)")
        return None
    raise DatasetError(f"FF++ folder for {kind} at {compression} does not exist", path=folder,
                       fix=f"{DOWNLOAD_FIX}, pick another compression, or drop it from methods")


def index_ffpp(root: str | os.PathLike, split: str = "all", compression: str = "c23",
               methods: Sequence[str] | str | None = None,
               splits_dir: str | os.PathLike | None = None, dfd_split: str = "test",
               allow_missing: bool = False) -> list[VideoRecord]:
    """Index FF++ videos of ``compression`` for ``split`` (``train``/``val``/``test``/``all``).

    ``methods``: default the four of the paper; ``FaceShifter`` and ``DeepFakeDetection`` are
    optional. ``splits_dir`` overrides the packaged official split JSONs. ``dfd_split``: the split
    DeepFakeDetection videos belong to. Videos a split lists but the disk lacks raise one
    :class:`DatasetError` (with ``allow_missing=True``: a warning, and they are skipped).
    """
    root = Path(root)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if dfd_split not in SPLITS:
        raise ValueError(f"dfd_split must be one of {SPLITS}, got {dfd_split!r}")
    method_list = parse_methods(methods)
    selected = splits_for(split, SPLITS, "FF++")
    if not (root / "original_sequences").is_dir():
        raise wrong_root(root, "FaceForensics++", LAYOUT, "original_sequences")

    split_pairs = load_splits(splits_dir)
    records: list[VideoRecord] = []
    missing: list[str] = []

    def add(folder: Path, listing: dict[str, Path], stem: str, key: str, label: int,
            method: str, split_name: str) -> None:
        if stem in listing:
            records.append(VideoRecord(key=key, path=str(listing[stem]), label=label,
                                       dataset=DATASET, method=method, split=split_name))
        else:
            missing.append(str((folder / stem).relative_to(root)))

    pair_methods = [m for m in method_list if m != DFD]
    real_dir = _videos_dir(root / "original_sequences", "youtube", compression, allow_missing)
    folders = {REAL_METHOD: real_dir}
    for method in pair_methods:
        folders[method] = _videos_dir(root / "manipulated_sequences", method, compression,
                                      allow_missing)
    listings = {m: scan_videos(f) for m, f in folders.items() if f is not None}

    for split_name in selected:
        for pair in split_pairs[split_name]:
            reals, fakes = pair_videos(pair)
            if real_dir is not None:
                for vid in reals:
                    add(real_dir, listings[REAL_METHOD], vid, f"{DATASET}/{compression}/real/{vid}",
                        REAL, REAL_METHOD, split_name)
            for method in pair_methods:
                if folders[method] is None:
                    continue
                for stem in fakes:
                    add(folders[method], listings[method], stem,
                        f"{DATASET}/{compression}/{method}/{stem}", FAKE, method, split_name)

    if DFD in method_list and dfd_split in selected:
        records.extend(_dfd_records(root, compression, dfd_split, allow_missing))

    handle_missing(missing, allow_missing, "FF++ videos listed by the split files", root,
                   fix=DOWNLOAD_FIX)
    return finalize(records, DATASET)


def _dfd_records(root: Path, compression: str, split: str,
                 allow_missing: bool) -> list[VideoRecord]:
    """Every DeepFakeDetection actor real and fake on disk, all assigned to ``split``."""
    out: list[VideoRecord] = []
    for kind, sub, label, method, key_dir in (
            ("actors", "original_sequences", REAL, REAL_METHOD, "actors"),
            (DFD, "manipulated_sequences", FAKE, DFD, DFD)):
        folder = _videos_dir(root / sub, kind, compression, allow_missing)
        if folder is None:
            continue
        listing = scan_videos(folder)
        if not listing:
            warn(f"FF++ DeepFakeDetection folder {folder} holds no videos")
        for stem, path in listing.items():
            out.append(VideoRecord(key=f"{DATASET}/{compression}/{key_dir}/{stem}",
                                   path=str(path), label=label, dataset=DATASET,
                                   method=method, split=split))
    return out


def demo_built_methods(root: str | os.PathLike) -> tuple[str, ...]:
    """The method names (artifact strengths included) ``<root>/demo_sources.json`` says were
    built; the four demo methods when the file is missing or names none."""
    path = Path(root) / DEMO_SOURCES_FILE
    if not path.is_file():
        return DEMO_METHODS
    try:
        methods = json.loads(path.read_text(encoding="utf-8")).get("methods") or DEMO_METHODS
    except (json.JSONDecodeError, AttributeError) as err:
        raise DatasetError("demo_sources.json is not a JSON object", path=path,
                           fix="rebuild the set with `deepfakemae demo-data --output <root>`") from err
    return tuple(methods)


def index_demo(root: str | os.PathLike, split: str = "all", compression: str = "c23",
               methods: Sequence[str] | str | None = None,
               allow_missing: bool = False) -> list[VideoRecord]:
    """The embedded demo set: FF++ layout with its own methods and ``<root>/splits/*.json``.

    ``methods`` default: every method the set's ``demo_sources.json`` lists as built, artifact
    strengths included (``FaceSwapWarp@s3``; see :func:`demo_built_methods`).
    """
    return index_ffpp(root, split=split, compression=compression,
                      methods=methods or demo_built_methods(root), splits_dir=Path(root) / "splits",
                      allow_missing=allow_missing)
