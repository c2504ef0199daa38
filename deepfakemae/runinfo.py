"""What a run records about itself: git revision, package versions, command line."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("deepfakemae", "torch", "torchvision", "lightning", "timm", "torchmetrics",
            "albumentations", "omegaconf", "jsonargparse", "wandb", "decord", "av", "dlib-bin",
            "face-alignment", "opencv-python-headless", "numpy")


def git_revision(cwd: str | Path | None = None) -> dict:
    """The current commit and whether the work tree has uncommitted changes (None outside git)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=where, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the stack's packages (None where one is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info() -> dict:
    """Everything a run should record to be reproducible."""
    return {"git": git_revision(), "packages": package_versions(), "python": sys.version.split()[0],
            "platform": platform.platform(), "argv": sys.argv}
