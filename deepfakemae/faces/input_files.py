"""Plain inputs (a video, a frame folder, a folder of either, or a list file) -> the
:class:`~deepfakemae.records.VideoRecord` s the face pipeline takes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deepfakemae.faces.cache import MANIFEST_NAME, SETTINGS_NAME, CacheError, validate_key
from deepfakemae.faces.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_frame_images
from deepfakemae.records import VideoRecord


def duplicate_keys(records: Iterable[VideoRecord]) -> dict[str, list[str]]:
    """Keys shared by several records -> the paths that share them."""
    paths: dict[str, list[str]] = {}
    for r in records:
        paths.setdefault(r.key, []).append(r.path)
    return {k: sorted(v) for k, v in sorted(paths.items()) if len(v) > 1}


def describe_duplicates(dups: dict[str, list[str]]) -> str:
    """An error message naming the inputs that share a key."""
    shown = "; ".join(f"{k!r} <- {', '.join(v)}" for k, v in list(dups.items())[:5])
    more = f" (and {len(dups) - 5} more keys)" if len(dups) > 5 else ""
    return (f"{len(dups)} video key(s) shared by several inputs: {shown}{more}; keys are paths "
            "without suffix, so rename or remove one input of each")


def _record(path: Path, key: str, where: str) -> VideoRecord:
    try:
        validate_key(key)
    except CacheError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return VideoRecord(key=key, path=str(path), label=-1, dataset="files",
                       method="unknown", split="test")


def _key_for(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return (rel.with_suffix("") if path.is_file() else rel).as_posix()


def _is_broken_link(path: Path) -> bool:
    """A symbolic link that does not lead to a file or folder (dangling, or a loop)."""
    return path.is_symlink() and not path.exists()


#: files a ``deepfakemae score --output`` folder holds: such a folder is never an input
SCORE_OUTPUT_FILES = ("predictions.json", "predictions.csv")


@dataclass
class InputScan:
    """What an input names: ``records`` to process, and ``skipped`` (``(path, why)``) for the
    files and folders under it that are not used (images beside videos, other files, the
    outputs of ``deepfakemae score``, excluded folders)."""

    records: list[VideoRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_excluded(path: Path, exclude: Sequence[Path]) -> bool:
    """True when ``path`` (absolute) is one of ``exclude`` or lies inside one."""
    return any(path == ex or path.is_relative_to(ex) for ex in exclude)


def _own_output(folder: Path) -> str | None:
    """What of the project's own outputs ``folder`` is (a ``score`` output: predictions.json
    and .csv; a face cache: entries/ and manifest.jsonl or cache.json), else ``None``."""
    if all((folder / name).is_file() for name in SCORE_OUTPUT_FILES):
        return "a `deepfakemae score` output folder (predictions.json)"
    if (folder / "entries").is_dir() and any(
            (folder / name).is_file() for name in (MANIFEST_NAME, SETTINGS_NAME)):
        return "a face cache (`deepfakemae preprocess --output`)"
    return None


def _list_records(listing: Path, exclude: Sequence[Path] = ()) -> InputScan:
    """Records of a ``.txt`` list: one path per line (``#`` comments, blank lines skipped).

    Paths are normalised lexically against the list's folder; one inside it is keyed relative
    to it, any other (``../x.mp4``, ``/data/x.mp4``) by its absolute path without the anchor.
    A listed folder of videos or of frame folders is expanded (keys ``<folder key>/<key
    inside>``); a leaf folder is one frame folder.
    """
    base = Path(os.path.normpath(listing.parent.absolute()))
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{listing} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save the list as UTF-8, one path per line") from exc
    scan = InputScan()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(os.path.normpath(base / line))  # base / "/abs" is "/abs"
        is_file = path.is_file() or not path.exists()  # missing: strip a suffix like a file's
        try:
            rel = path.relative_to(base)
        except ValueError:
            rel = path.relative_to(path.anchor)
        key = (rel.with_suffix("") if is_file else rel).as_posix()
        if path.is_dir() and not _is_leaf(path):
            inner = _folder_records(path, exclude)
            scan.skipped += inner.skipped
            if inner.records:
                scan.records += [_record(Path(r.path), f"{key}/{r.key}", f"{listing}:{lineno}")
                                 for r in inner.records]
                continue
        scan.records.append(_record(path, key, f"{listing}:{lineno}"))
    return scan


def _is_leaf(folder: Path) -> bool:
    """True for a folder without sub-folders and videos: one frame folder."""
    return not any(p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES for p in folder.iterdir())


def _folder_records(folder: Path, exclude: Sequence[Path] = ()) -> InputScan:
    """Records of the videos and leaf frame folders under ``folder``; video-named symbolic
    links that lead nowhere (dangling, loops) are kept so that they get a status too. Folders
    in ``exclude`` (absolute), folders ``score`` wrote and face caches are left out; other
    files (images beside videos, anything else not hidden) are listed as skipped."""
    scan = InputScan()
    root = folder.absolute()
    outputs: list[Path] = []  # output folders found (their subtree is skipped)
    for path in sorted(folder.rglob("*")):
        where = root / path.relative_to(folder)
        if _is_excluded(where, [*exclude, *outputs]):
            continue
        own = _own_output(path) if path.is_dir() else None
        if own is not None:
            outputs.append(where)
            scan.skipped.append((path, f"{own}, not an input"))
            continue
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        if is_video and (path.is_file() or _is_broken_link(path)):
            scan.records.append(_record(path, path.relative_to(folder).with_suffix("")
                                        .as_posix(), str(path)))
        elif path.is_dir() and _is_leaf(path):
            scan.records.append(_record(path, _key_for(path, folder), str(path)))  # frames
        elif not path.is_dir() and not path.name.startswith(".") and not _is_leaf(path.parent):
            why = ("an image beside videos or folders (put a video's frames in a folder of "
                   "their own, or pass the image itself as --video/--input)"
                   if path.suffix.lower() in IMAGE_SUFFIXES else
                   "not a video" if path.is_file() or path.is_symlink() else
                   "not a regular file")
            scan.skipped.append((path, why))
    if not scan.records and _own_output(folder) is None and list_frame_images(folder):
        scan.records.append(_record(folder, folder.name, str(folder)))  # one frame folder
        scan.skipped = [(p, why) for p, why in scan.skipped if p.parent != folder]
    return scan


def _kind(path: Path) -> str:
    """What ``path`` is when it is neither a regular file nor a folder."""
    mode = path.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def scan_inputs(input: Path, exclude: Sequence[Path] = ()) -> InputScan:
    """The records (and skipped paths) of a video file, a folder of videos and/or frame
    folders, or a ``.txt`` list; paths in ``exclude`` (e.g. the output folder) are left out.

    Keys are the paths relative to the input folder without suffix (POSIX); a single file's key
    is its stem; list entries are keyed relative to the list file's folder when inside it.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the offending path (also for a FIFO or
    device, and when two inputs share a key, e.g. ``clip.mp4`` and ``clip.avi``).
    """
    input = Path(input)
    exclude = [Path(os.path.abspath(ex)) for ex in exclude]
    if not input.exists():
        raise FileNotFoundError(f"input {input} does not exist")
    if not (input.is_file() or input.is_dir()):
        raise ValueError(f"input {input} is {_kind(input)}, not a video, a folder or a .txt "
                         "list; save the stream to a file first")
    if input.is_file() and input.suffix.lower() == ".txt":
        scan = _list_records(input, exclude)
    elif input.is_file():
        scan = InputScan([_record(input, input.stem, str(input))])
    else:
        scan = _folder_records(input, exclude)
        if not scan.records:
            raise ValueError(f"{input} holds no videos {VIDEO_SUFFIXES} and no frame folders "
                             f"{IMAGE_SUFFIXES}")
    dups = duplicate_keys(scan.records)
    if dups:
        raise ValueError(describe_duplicates(dups))
    return scan


def records_from_inputs(input: Path, exclude: Sequence[Path] = ()) -> list[VideoRecord]:
    """The records of :func:`scan_inputs` (skipped paths dropped)."""
    return scan_inputs(input, exclude).records
