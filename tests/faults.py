"""Fault injection for tests/test_faults.py: a callback the stage processes of a test plan load
(tests/ on PYTHONPATH) that sends a real signal at a chosen training step.

``FAULTS`` (environment): comma-separated ``stage:SIGNAL:target:step`` entries, ``target``
``self`` (the stage process), ``group`` (its process group: the stage and its loader workers, as
Ctrl-C in a terminal or a cluster's SIGTERM reach them) or ``parent`` (the plan runner); each
fires once (a marker file
under ``FAULT_DIR``), in order, when its stage passes its step (a test stage: at its start).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from lightning.pytorch import Callback


def _pending(stage: str) -> tuple[str, str, int, Path] | None:
    """The first unfired fault (signal, target, step, marker) of ``stage``."""
    root = Path(os.environ.get("FAULT_DIR", "."))
    for i, entry in enumerate(filter(None, os.environ.get("FAULTS", "").split(","))):
        name, sig, target, step = entry.split(":")
        marker = root / f"fault-{i}"
        if marker.exists():
            continue
        return (sig, target, int(step), marker) if name == stage else None
    return None


def _fire(sig: str, target: str, marker: Path) -> None:
    marker.write_text(f"{sig} {target} {time.time()}")
    if target == "group":
        os.killpg(os.getpgrp(), getattr(signal, sig))
        return
    pid = os.getppid() if target == "parent" else os.getpid()
    if sig == "SIGUSR1":  # handled (Lightning saves and requeues); give it time to run
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.2)
        return
    os.kill(pid, getattr(signal, sig))
    if sig == "SIGKILL" and target == "self":
        time.sleep(60)


class FaultAtStep(Callback):
    """Sends the configured signal when the stage's ``global_step`` reaches the fault's step."""

    def _maybe_fire(self, trainer, step: int) -> None:
        fault = _pending(Path(trainer.default_root_dir).name)
        if fault is not None and step >= fault[2]:
            _fire(fault[0], fault[1], fault[3])
            if fault[1] == "parent":
                time.sleep(0.5)  # let the runner forward the signal before the next step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe_fire(trainer, trainer.global_step)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        self._maybe_fire(trainer, 10**9)  # a test stage: at its first batch
