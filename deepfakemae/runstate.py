"""The state of a stage folder (``RUN_DIR/<stage>``) and the lock of the trainer working in it.

One rule for the plan runner, ``deepfakemae demo``, the ``--dry-run`` lines and hand-written job
scripts (:func:`stage_state`): a ``fit`` stage is *done* only when its own run wrote
``done.json`` (:class:`deepfakemae.callbacks.CompletionRecord`: the whole schedule ran, the
final checkpoint is saved) and that checkpoint is still the one it names; a ``test`` stage is
done when its ``results_test.json`` passes :func:`deepfakemae.results.read_results`. A fit
stage with a checkpoint but no valid record is *resume* (``--ckpt_path`` of
:func:`resume_checkpoint`); anything else is *pending*.

A trainer holds ``<stage>/.lock`` (host, PID, process start time) while it runs
(:func:`acquire_lock`); a second trainer is refused while the holder lives, and the lock of a
dead process on this host is taken over with a note.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import atomic_write_text, pid_alive, tmp_name
from deepfakemae.results import ResultsError, read_results
from deepfakemae.rundir import RESULTS_FILE, last_checkpoint, results_file

DONE_FILE = "done.json"
LOCK_FILE = ".lock"
#: set by the plan runner for its fit stages: the settings hash their ``done.json`` records
#: (:meth:`deepfakemae.plans.Job.settings_hash`), so that a later plan can tell its own settings
SETTINGS_ENV = "DEEPFAKEMAE_SETTINGS_HASH"
#: set by the plan runner for its stage processes: they exit when that process is gone
PARENT_ENV = "DEEPFAKEMAE_PARENT_PID"
#: seconds between two looks at the parent, and the grace a graceful stop gets before a hard exit
PARENT_POLL_S, PARENT_GRACE_S = 0.5, 120.0


@dataclass
class StageState:
    """``status`` (``done`` | ``resume`` | ``pending``), why, and the checkpoint: the final one
    (done fit) or the one to resume from (resume)."""

    status: str
    reason: str
    checkpoint: Path | None = None


def resume_checkpoint(stage_dir: Path) -> Path | None:
    """The newest resumable checkpoint of a fit stage: ``checkpoints/last.ckpt`` (also written
    by an interrupted fit) or a SLURM ``hpc_ckpt_*.ckpt`` Lightning saved on ``SIGUSR1``."""
    stage_dir = Path(stage_dir)
    found = [p for p in [last_checkpoint(stage_dir),
                         *stage_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def write_done(stage_dir: Path, record: dict) -> Path:
    """Write ``<stage_dir>/done.json`` atomically (``record``: JSON-able)."""
    path = Path(stage_dir) / DONE_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True))
    return path


def read_done(stage_dir: Path) -> dict:
    """The completion record of a done fit stage (``{}`` when absent or unreadable: such a
    stage is not done, :func:`stage_state` says why)."""
    try:
        record = json.loads((Path(stage_dir) / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def finished_at(stage_dir: Path, command: str) -> float | None:
    """When a done stage finished (seconds since the epoch): its ``done.json``'s ``finished``
    (else the file's own time), or its results file's time for a ``test`` stage."""
    stage_dir = Path(stage_dir)
    if command != "fit":
        path = results_file(stage_dir)
    else:
        finished = read_done(stage_dir).get("finished")
        if isinstance(finished, (int, float)):
            return float(finished)
        path = stage_dir / DONE_FILE
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def clear_done(stage_dir: Path) -> None:
    """Remove a stage's completion record (a new fit starts in its folder)."""
    (Path(stage_dir) / DONE_FILE).unlink(missing_ok=True)


def _done_checkpoint(stage_dir: Path) -> tuple[Path | None, str]:
    """The final checkpoint a valid ``done.json`` names, or None and why not."""
    path = stage_dir / DONE_FILE
    if not path.exists():
        return None, f"no {DONE_FILE} (the fit has not finished its schedule)"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        checkpoint = stage_dir / record["checkpoint"]
        size = int(record["checkpoint_bytes"])
        int(record["global_step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path} is unreadable or incomplete ({exc!r}); the stage is not counted done"
    if not checkpoint.is_file() or checkpoint.stat().st_size != size:
        return None, (f"{path} names {checkpoint}, which is missing or was rewritten since; "
                      "the stage is not counted done")
    return checkpoint, "finished its schedule"


def stage_state(stage_dir: Path, command: str) -> StageState:
    """The state of the stage in ``stage_dir`` run by ``command`` (``fit`` or ``test``)."""
    stage_dir = Path(stage_dir)
    if command != "fit":
        if not (results_file(stage_dir)).exists():
            return StageState("pending", "")
        try:
            read_results(results_file(stage_dir), fix="the stage will be run again")
        except ResultsError as exc:
            return StageState("pending", str(exc))
        return StageState("done", f"{RESULTS_FILE} is complete", None)
    final, why = _done_checkpoint(stage_dir)
    if final is not None:
        return StageState("done", why, final)
    resume = resume_checkpoint(stage_dir)
    if resume is not None:
        return StageState("resume", f"{why}; resumes from {resume}", resume)
    return StageState("pending", "" if final is None and not (stage_dir / DONE_FILE).exists()
                      else why)


# ------------------------------------------------------------------------------------------ lock
class StageLockedError(DeepfakeMAEError, RuntimeError):
    """Another live trainer holds the stage folder; the message names it and the fix."""


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``: clock ticks since boot), None where
    it cannot be read: with the PID it tells a reused PID from the lock's writer."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _host() -> str:
    return socket.gethostname() or "host"


def lock_holder(stage_dir: Path) -> dict | None:
    """The live holder of ``<stage_dir>/.lock`` ({host, pid, ...}); None when there is no lock
    or its writer is a dead process of this host (a stale lock)."""
    path = Path(stage_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        pid = int(holder["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: no writer of ours leaves one (written whole, then linked)
    if holder.get("host") != _host():
        return holder  # another host's process cannot be checked from here: live
    if not pid_alive(pid):
        return None
    started = holder.get("started_ticks")
    if started is not None and _start_time(pid) not in (None, started):
        return None  # the PID was reused by another process
    return holder


def describe(holder: dict) -> str:
    """``PID 123 on host h (since 12:00:00)``."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"PID {holder.get('pid')} on host {holder.get('host')} (since {since})"


def acquire_lock(stage_dir: Path, what: str = "a trainer") -> Path:
    """Take ``<stage_dir>/.lock`` for this process; :class:`StageLockedError` when another live
    process holds it. A stale lock (dead PID on this host) is taken over with a note on stderr."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / LOCK_FILE
    record = {"host": _host(), "pid": os.getpid(), "started_ticks": _start_time(os.getpid()),
              "time": time.time(), "argv": sys.argv, "what": what}
    tmp = stage_dir / tmp_name(".lock")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)  # atomic: fails when a lock exists
                return path
            except FileExistsError:
                pass
            holder = lock_holder(stage_dir)
            if holder is not None and holder.get("pid") == os.getpid() \
                    and holder.get("host") == _host():
                return path
            if holder is not None:
                raise StageLockedError(
                    f"{stage_dir} is in use by another trainer: {describe(holder)} holds "
                    f"{path}; wait for it to end (or stop it), or, if that process is gone, "
                    f"remove {path}")
            print(f"note: taking over the stale lock {path} (its process is gone)",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
        raise StageLockedError(f"{path}: could not take the lock (another process keeps taking "
                               f"it); remove it if no trainer runs there")
    finally:
        tmp.unlink(missing_ok=True)


def release_lock(stage_dir: Path) -> None:
    """Remove ``<stage_dir>/.lock`` if this process holds it."""
    path = Path(stage_dir) / LOCK_FILE
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if holder.get("pid") == os.getpid() and holder.get("host") == _host():
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ parent
def exit_with_parent() -> bool:
    """In a stage process the plan runner started (``DEEPFAKEMAE_PARENT_PID`` = its parent):
    watch the parent and, when it is gone (``kill -9`` of the runner), stop gracefully with a
    SIGTERM to this process (a fit saves a resumable checkpoint), then exit after
    :data:`PARENT_GRACE_S` if still running. Returns whether a watchdog was started (not in
    DDP's other ranks, whose parent is rank 0)."""
    expected = os.environ.get(PARENT_ENV)
    if _WATCHING:
        return False
    if not expected or not expected.isdigit() or os.getppid() != int(expected):
        return False
    parent = int(expected)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        print(f"deepfakemae: the plan runner (PID {parent}) is gone; stopping this stage",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(PARENT_GRACE_S)
        os._exit(143)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    _WATCHING.append(parent)
    return True


_WATCHING: list[int] = []
