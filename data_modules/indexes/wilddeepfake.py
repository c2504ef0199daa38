"""WildDeepfake index: folders of cropped face frames, one folder per sequence.

Layout (the download is ``deepfake_in_the_wild/``)::

    <root>/{real_train,real_test,fake_train,fake_test}/N.tar.gz      as distributed
    <root>/real_test/N/real/<sequence>/<frame>.png                    after extraction

A *sequence* is any folder (at any depth below a split folder) that directly contains image
files; it is one "video" for the face pipeline. Archive ``N.tar.gz`` counts as extracted when a
folder ``N/`` sits beside it. With ``extract=True`` pending archives are unpacked into that folder
(through a hidden ``.N.partial`` folder renamed at the end, so an interrupted run starts the
archive again), with a filter that refuses members escaping the destination (absolute names,
``..``, links pointing outside, device files); such an archive raises :class:`DatasetError` and
nothing of it is kept. Without ``extract`` a split folder holding only archives raises an error
that gives the command to run.

Keys: ``wilddeepfake/<split folder>/<sequence path relative to it>``; splits ``train``/``test``.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from data_modules.indexes.common import (
    IMAGE_SUFFIXES,
    DatasetError,
    finalize,
    handle_missing,
    is_safe_relative,
    splits_for,
    warn,
    wrong_root,
)
from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.records import FAKE, REAL, REAL_METHOD, VideoRecord

DATASET = "wilddeepfake"
FAKE_METHOD = "wilddeepfake_fake"
#: split folder -> (split, label, method)
SPLIT_DIRS = {
    "real_train": ("train", REAL, REAL_METHOD),
    "fake_train": ("train", FAKE, FAKE_METHOD),
    "real_test": ("test", REAL, REAL_METHOD),
    "fake_test": ("test", FAKE, FAKE_METHOD),
}
OFFERED_SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
PARTIAL_SUFFIX = ".partial"


class UnsafeMemberError(DeepfakeMAEError):
    """An archive member that is not a plain file or folder inside the destination."""


#: what a refused member raises: tarfile's own filter errors, or ours on older Pythons
_REFUSED = (getattr(tarfile, "FilterError", UnsafeMemberError), UnsafeMemberError)


def archive_id(path: Path) -> str:
    """``N`` for ``N.tar.gz`` / ``N.tgz`` / ``N.tar``."""
    for suffix in ARCHIVE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_archives(folder: Path) -> list[Path]:
    """Archives directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))


def pending_archives(folder: Path) -> list[Path]:
    """Archives of ``folder`` with no extracted ``<id>/`` folder beside them."""
    return [a for a in find_archives(folder) if not (folder / archive_id(a)).is_dir()]


def find_sequences(folder: Path) -> list[Path]:
    """Folders below ``folder`` (any depth, hidden ones skipped) that directly contain images."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if Path(dirpath) != folder and any(f.lower().endswith(IMAGE_SUFFIXES)
                                           for f in filenames):
            found.append(Path(dirpath))
    return found


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Pre-check for Pythons without ``tarfile.data_filter``: regular files and folders only."""
    members = tar.getmembers()
    for m in members:
        if not (m.isfile() or m.isdir()) or not is_safe_relative(m.name):
            raise UnsafeMemberError(f"unsafe member {m.name!r} in {archive}")
    return members


def _strict_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """``tarfile.data_filter`` plus: absolute names are refused, not silently made relative."""
    if not is_safe_relative(member.name):
        raise UnsafeMemberError(f"unsafe member name {member.name!r}")
    return tarfile.data_filter(member, dest)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Safely extract one archive into ``dest`` (default ``<archive folder>/<id>``).

    Members that would land outside ``dest`` make the whole archive fail with a
    :class:`DatasetError`; the partial output is removed and nothing is written outside ``dest``.
    """
    archive = Path(archive)
    dest = Path(dest) if dest is not None else archive.parent / archive_id(archive)
    if dest.exists():
        raise DatasetError("extraction target already exists", path=dest,
                           fix="remove it to extract the archive again")
    partial = dest.parent / f".{dest.name}{PARTIAL_SUFFIX}"
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run of ours
    partial.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(partial, filter=_strict_filter)
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(partial, members=_checked_members(tar, archive))
    except _REFUSED as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(f"archive has a member that escapes its destination or is not a plain "
                           f"file ({err}); refusing to extract it", path=archive,
                           fix="re-download the archive from the official source") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetError(f"cannot extract archive ({err})", path=archive,
                           fix="re-download the archive; it is truncated or corrupt") from err
    partial.rename(dest)
    return dest


def extract_command(root: Path, folder: Path) -> str:
    """The commands that extract the archives of ``folder`` the way this index expects."""
    return (f"run `deepfakemae preprocess --dataset wilddeepfake --root {root} --extract ...`, "
            f"or in a shell: for f in {folder}/*.tar.gz; do d=\"${{f%.tar.gz}}\"; "
            f"mkdir -p \"$d\" && tar -xzf \"$f\" -C \"$d\"; done")


def index_wilddeepfake(root: str | os.PathLike, split: str = "all", extract: bool = False,
                       allow_missing: bool = False) -> list[VideoRecord]:
    """Index WildDeepfake sequences for ``split`` (``train``/``test``/``all``).

    ``extract=True`` first unpacks archives that have no ``<id>/`` folder yet. Missing split
    folders raise a :class:`DatasetError` unless ``allow_missing=True`` (warning, skipped).
    """
    root = Path(root)
    selected = splits_for(split, OFFERED_SPLITS, "WildDeepfake")
    if not any((root / d).is_dir() for d in SPLIT_DIRS):
        raise wrong_root(root, "WildDeepfake", "real_train/, real_test/, fake_train/, fake_test/",
                         "real_test")
    wanted = [d for d, (s, _, _) in SPLIT_DIRS.items() if s in selected]
    absent = [d for d in wanted if not (root / d).is_dir()]
    handle_missing(absent, allow_missing, "WildDeepfake split folders", root,
                   fix="extract the full deepfake_in_the_wild download into this root")

    records: list[VideoRecord] = []
    for name in wanted:
        folder = root / name
        if name in absent:
            continue
        split_name, label, method = SPLIT_DIRS[name]
        pending = pending_archives(folder)
        if pending and extract:
            for archive in pending:
                extract_archive(archive)
            pending = []
        sequences = find_sequences(folder)
        if not sequences:
            if pending:
                raise DatasetError(f"{folder} holds {len(pending)} archives but no extracted "
                                   f"sequence folders", path=folder,
                                   fix=extract_command(root, folder))
            handle_missing([name], allow_missing, "WildDeepfake sequence folders (folders of "
                           "frame images)", root, fix="extract the dataset archives")
            continue
        if pending:
            warn(f"{len(pending)} archives in {folder} have no extracted folder beside them "
                 f"(e.g. {pending[0].name}); if they are not extracted: "
                 + extract_command(root, folder))
        for seq in sequences:
            rel = seq.relative_to(folder).as_posix()
            records.append(VideoRecord(key=f"{DATASET}/{name}/{rel}", path=str(seq), label=label,
                                       dataset=DATASET, method=method, split=split_name))
    return finalize(records, DATASET)
