"""Experiment loggers: W&B, offline unless the user has logged in."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when W&B credentials are available (``WANDB_API_KEY`` or ``~/.netrc`` entry)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline (no account, no network) unless the user is logged in.

    Offline runs land in ``<save_dir>/wandb/offline-run-*`` and can be uploaded later with
    ``wandb sync <that folder>``. W&B's own cache and config folders are kept under ``save_dir``
    so nothing is written to the home directory.
    """

    def __init__(self, save_dir: str = "runs", project: str = "deepfakemae", name: str | None = None,
                 offline: bool | None = None, log_model: bool = False, **kwargs) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".wandb-cache"),
                         ("WANDB_CONFIG_DIR", ".wandb-config")):
            os.environ.setdefault(var, str(Path(save_dir, sub).resolve()))
        if offline is None:
            offline = not wandb_logged_in()
        super().__init__(save_dir=save_dir, project=project, name=name, offline=offline,
                         log_model=log_model and not offline, **kwargs)
