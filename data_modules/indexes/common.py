"""Helpers shared by the dataset indexes: safe paths, clear errors, split checks, final ordering.

Every index lists files only (it never decodes a video), reports every problem as a
:class:`DatasetError` that names the offending path and how to fix it, and ends with
:func:`finalize` so that records come back sorted by key with unique keys.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.records import VideoRecord

#: suffixes listed as videos and as frame images (kept in step with ``deepfakemae.faces.video``)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                  ".wmv", ".ts", ".3gp", ".ogv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

SPLITS = ("train", "val", "test")
ALL = "all"
#: how many offending names an error message lists before "... and N more"
MAX_LISTED = 5


class DatasetError(DeepfakeMAEError, ValueError, RuntimeError):
    """A dataset root, list or entry that cannot be indexed, or a face cache or data
    configuration that cannot be used (``DataError``, its old name, is the same class).

    The message names the path and, when one is known, the fix; both are also kept as
    attributes (``path``, ``fix``) for callers that format errors themselves.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None,
                 fix: str | None = None):
        self.path = None if path is None else str(path)
        self.fix = fix
        lines = [message]
        if path is not None:
            lines.append(f"path: {path}")
        if fix:
            lines.append(f"fix: {fix}")
        super().__init__("\n  ".join(lines))


class DatasetWarning(UserWarning):
    """Something was skipped on purpose (missing videos with ``allow_missing``, unsafe entries)."""


def warn(message: str) -> None:
    """Emit a :class:`DatasetWarning` attributed to the first caller outside this package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DatasetWarning, stacklevel=level)


def preview(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c ... and N more`` for error messages."""
    shown = ", ".join(str(n) for n in names[:limit])
    rest = len(names) - limit
    return f"{shown} ... and {rest} more" if rest > 0 else shown


def is_safe_relative(name: str) -> bool:
    """True if ``name`` is a relative path that stays inside the folder it is joined to.

    Rejects empty names, NUL bytes, absolute POSIX or Windows paths (``/x``, ``C:\\x``, ``C:x``)
    and any ``..`` component (backslashes count as separators for this check).
    """
    if not name or "\x00" in name:
        return False
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or name.startswith("\\"):
        return False
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return bool(parts) and ".." not in parts


def safe_join(root: str | os.PathLike, relative: str, what: str = "path") -> Path:
    """Join ``relative`` under ``root``; raise :class:`DatasetError` if it would escape ``root``.

    The check is lexical (symbolic links inside a dataset are the user's choice and are kept).
    """
    if not is_safe_relative(relative):
        raise DatasetError(
            f"{what} {relative!r} is not a relative path inside {root}; refusing to read it",
            path=root, fix="remove or correct that entry; names must stay inside the dataset folder")
    parts = [p for p in relative.replace("\\", "/").split("/") if p not in ("", ".")]
    return Path(root).joinpath(*parts)


def child_with(root: Path, marker: str) -> Path | None:
    """The first direct sub-folder of ``root`` that contains ``marker`` (to hint at a wrong root)."""
    if not root.is_dir():
        return None
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child / marker).exists():
            return child
    return None


def wrong_root(root: Path, dataset: str, layout: str, marker: str) -> DatasetError:
    """A :class:`DatasetError` for a root that does not have ``dataset``'s layout."""
    if not root.exists():
        return DatasetError(f"{dataset} root does not exist", path=root,
                            fix=f"pass the folder that holds {layout}")
    better = child_with(root, marker)
    fix = (f"did you mean --root {better}? it contains {marker}" if better is not None
           else f"pass the folder that holds {layout}")
    return DatasetError(f"{root} does not look like a {dataset} root (no {marker} inside)",
                        path=root, fix=fix)


def read_text(path: Path, what: str, fix: str) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); a file that is not
    UTF-8 or cannot be read raises :class:`DatasetError` naming it, the byte and ``fix``."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} is not UTF-8 text ({exc.reason}: byte "
                           f"0x{exc.object[exc.start]:02x} at offset {exc.start})", path=path,
                           fix=f"{fix} (the file must be UTF-8)") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {what} ({exc.strerror or exc})", path=path,
                           fix=fix) from exc


def splits_for(split: str, offered: Sequence[str], dataset: str) -> tuple[str, ...]:
    """Validate a ``split`` argument and return the splits it selects (``"all"`` = ``offered``)."""
    if split == ALL:
        return tuple(offered)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS + (ALL,)}, got {split!r}")
    if split not in offered:
        raise ValueError(f"{dataset} has no {split!r} split; it offers {tuple(offered)} "
                         f"(use --split all or one of those; Python: split='all')")
    return (split,)


def handle_missing(missing: Sequence[str], allow_missing: bool, what: str,
                   where: str | os.PathLike, fix: str) -> None:
    """Raise one error listing the missing ``what`` (or warn and go on with ``allow_missing``)."""
    if not missing:
        return
    message = f"{len(missing)} {what} missing under {where}: {preview(sorted(missing))}"
    if allow_missing:
        warn(message + " (skipped because of --allow-missing)")
        return
    raise DatasetError(message, path=where,
                       fix=f"{fix}; or rerun with --allow-missing to skip them with a warning "
                           "(Python: allow_missing=True)")


def has_images(folder: Path) -> bool:
    """True if ``folder`` directly contains at least one frame image."""
    try:
        with os.scandir(folder) as it:
            return any(e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in it)
    except OSError:
        return False


def scan_videos(folder: Path) -> dict[str, Path]:
    """Map stem -> input for the video files and frame folders directly inside ``folder``.

    A video file wins over a frame folder of the same stem (videos are the real layout; frame
    folders serve users who extracted frames, e.g. ``videos/000/0001.png``).
    """
    found: dict[str, Path] = {}
    folders: dict[str, Path] = {}
    with os.scandir(folder) as it:
        for entry in it:
            path = Path(entry.path)
            if entry.is_file() and entry.name.lower().endswith(VIDEO_SUFFIXES):
                found[path.stem] = path
            elif entry.is_dir() and has_images(path):
                folders[entry.name] = path
    for stem, path in folders.items():
        found.setdefault(stem, path)
    return found


def finalize(records: Iterable[VideoRecord], dataset: str) -> list[VideoRecord]:
    """Sort records by key and check that keys are unique and labels are 0/1."""
    ordered = sorted(records, key=lambda r: r.key)
    seen: set[str] = set()
    duplicates: list[VideoRecord] = []
    for rec in ordered:
        if rec.label not in (0, 1):
            raise DatasetError(f"{dataset}: record {rec.key} has label {rec.label!r}, not 0/1",
                               path=rec.path, fix="this is a bug in the index; please report it")
        if rec.key in seen:
            duplicates.append(rec)
        seen.add(rec.key)
    if duplicates:
        raise DatasetError(f"{dataset}: {len(duplicates)} duplicate video keys: "
                           f"{preview([r.key for r in duplicates])}", path=duplicates[0].path,
                           fix="two inputs map to the same key; remove the duplicate files")
    return ordered
