"""Plain inputs (a video, a frame folder, a folder of either, or a list file) -> the
:class:`~deepfakemae.records.VideoRecord` s the face pipeline takes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from deepfakemae.faces.cache import CacheError, validate_key
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


def _list_records(listing: Path) -> list[VideoRecord]:
    """Records of a ``.txt`` list: one path per line (``#`` comments, blank lines skipped).

    Paths are normalised lexically against the list's folder; one inside it is keyed relative
    to it, any other (``../x.mp4``, ``/data/x.mp4``) by its absolute path without the anchor.
    """
    base = Path(os.path.normpath(listing.parent.absolute()))
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{listing} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                         "save the list as UTF-8, one path per line") from exc
    records = []
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
        records.append(_record(path, key, f"{listing}:{lineno}"))
    return records


def _folder_records(folder: Path) -> list[VideoRecord]:
    """Records of the videos and leaf frame folders under ``folder``; video-named symbolic
    links that lead nowhere (dangling, loops) are kept so that they get a status too."""
    records = []
    for path in sorted(folder.rglob("*")):
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        if is_video and (path.is_file() or _is_broken_link(path)):
            records.append(_record(path, path.relative_to(folder).with_suffix("").as_posix(),
                                   str(path)))
        elif path.is_dir() and not any(
                p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES for p in path.iterdir()):
            records.append(_record(path, _key_for(path, folder), str(path)))  # a frame folder
    if not records and list_frame_images(folder):
        records.append(_record(folder, folder.name, str(folder)))  # one frame folder itself
    return records


def records_from_inputs(input: Path) -> list[VideoRecord]:
    """Records for a video file, a folder of videos and/or frame folders, or a ``.txt`` list.

    Keys are the paths relative to the input folder without suffix (POSIX); a single file's key
    is its stem; list entries are keyed relative to the list file's folder when inside it.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the offending path (also when two
    inputs share a key, e.g. ``clip.mp4`` and ``clip.avi``).
    """
    input = Path(input)
    if not input.exists():
        raise FileNotFoundError(f"input {input} does not exist")
    if input.is_file() and input.suffix.lower() == ".txt":
        records = _list_records(input)
    elif input.is_file():
        records = [_record(input, input.stem, str(input))]
    else:
        records = _folder_records(input)
        if not records:
            raise ValueError(f"{input} holds no videos {VIDEO_SUFFIXES} and no frame folders "
                             f"{IMAGE_SUFFIXES}")
    dups = duplicate_keys(records)
    if dups:
        raise ValueError(describe_duplicates(dups))
    return records
