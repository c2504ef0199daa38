"""Where a run folder keeps its files: the one place their names are spelt.

A run folder (``RUN_DIR``, ``--run-dir``) holds one folder per stage (``pretrain``,
``finetune``, ``mapping``, ``detector``); a stage folder holds ``checkpoints/last.ckpt`` (a
``fit``), ``results_test.json`` and ``scores_test.csv`` (a ``test``).
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
RESULTS_FILE = "results_test.json"
SCORES_FILE = "scores_test.csv"


def checkpoints_dir(stage_dir: str | Path) -> Path:
    """``<stage_dir>/checkpoints``: where a fit stage's checkpoints are saved."""
    return Path(stage_dir) / CHECKPOINTS_DIR


def last_checkpoint(stage_dir: str | Path) -> Path:
    """``<stage_dir>/checkpoints/last.ckpt``: a fit stage's final (or latest) weights."""
    return checkpoints_dir(stage_dir) / LAST_CHECKPOINT


def results_file(stage_dir: str | Path) -> Path:
    """``<stage_dir>/results_test.json``: every metric of a test stage."""
    return Path(stage_dir) / RESULTS_FILE


def scores_file(stage_dir: str | Path) -> Path:
    """``<stage_dir>/scores_test.csv``: every scored frame of a test stage."""
    return Path(stage_dir) / SCORES_FILE


def stage_of_checkpoint(checkpoint: str | Path) -> Path:
    """The stage folder of ``<stage dir>/checkpoints/x.ckpt``; the file's own folder when it does
    not sit in a ``checkpoints`` folder."""
    parent = Path(checkpoint).parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else parent
