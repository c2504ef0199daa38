"""Atomic file writes: a temporary file beside the target, named after its writer, renamed into
place; leftovers of killed writers are recognised as stale."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_PREFIX = ".tmp-"
#: a temporary file of another host (or of an unknown writer) older than this is stale
STALE_TMP_SECONDS = 24 * 3600


def tmp_name(suffix: str) -> str:
    """``.tmp-<host>-<pid>-<random><suffix>``: who wrote it, so stale ones can be swept."""
    host = socket.gethostname().replace("-", "_") or "host"
    return f"{TMP_PREFIX}{host}-{os.getpid()}-{secrets.token_hex(6)}{suffix}"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; it replaces ``path`` when the
    block ends without an error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / tmp_name(path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(handle)`` on a temporary file, sync it and rename it to ``path``.

    The file is created with mode 0666 minus the umask (not ``mkstemp``'s 0600), so a cache on
    shared storage is as readable as the user's umask allows.
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_tmp(path: Path, now: float | None = None) -> bool:
    """True for a leftover temporary file: its writer on this host is gone, or (another host's,
    or an unknown writer's) it is older than :data:`STALE_TMP_SECONDS`."""
    parts = path.name[len(TMP_PREFIX):].split("-")
    if len(parts) >= 3 and parts[0] == socket.gethostname().replace("-", "_") and \
            parts[1].isdigit():
        return int(parts[1]) != os.getpid() and not pid_alive(int(parts[1]))
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_TMP_SECONDS


def utf8_text(value):
    """``value`` (a str, or lists/dicts of them) with lone surrogates replaced by the text their
    bytes spell in UTF-8 (U+FFFD where they are not UTF-8).

    Under a non-UTF-8 locale (``LC_ALL=C``) Python decodes a file name's non-ASCII bytes as lone
    surrogates (``"vid\\udcc3\\udca9o"``); written as they are, JSON holds ``\\udcc3`` escapes
    and a UTF-8 CSV cannot be written at all. Use this on text bound for a file, never on a
    path that is still to be opened.
    """
    if isinstance(value, str):
        if not any("\ud800" <= c <= "\udfff" for c in value):
            return value
        try:
            data = value.encode("utf-8", "surrogateescape")  # a file name's own bytes
        except UnicodeEncodeError:  # a surrogate no decoder made: not a file name's byte
            data = value.encode("utf-8", "surrogatepass")
        return data.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {utf8_text(k): utf8_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [utf8_text(v) for v in value]
    return value


def fs_text(text: str) -> str:
    """The inverse of :func:`utf8_text` for a file name: ``text`` as the file system spells it
    under the current locale (``"vidéo"`` → ``"vid\\udcc3\\udca9o"`` under ``LC_ALL=C``,
    unchanged under UTF-8), so that a name read back from a UTF-8 file opens the same file."""
    return os.fsdecode(text.encode("utf-8", "surrogateescape"))
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: readers see the old file or the whole new
    one, never a truncated or half-written one (:func:`atomic_write`)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
