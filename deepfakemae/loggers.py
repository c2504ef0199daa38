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


def wandb_disabled() -> bool:
    """True when ``WANDB_MODE=disabled``: no run, no files."""
    return os.environ.get("WANDB_MODE", "").lower() == "disabled"


def wandb_mode() -> str:
    """The mode of a W&B run started outside Lightning: ``WANDB_MODE`` when set, else online
    when logged in (`wandb_logged_in`), else offline."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def run_identity(name: str | None) -> dict:
    """W&B ``name``, ``group``, ``job_type`` and ``tags`` of a run: ``WANDB_NAME``,
    ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE`` and ``WANDB_TAGS`` (comma-separated) when set (the
    table runner sets them: ``<table>/<variant>/<stage>``), else the config's ``name`` (the
    stage) as name, job type and tag."""
    env = os.environ
    name = env.get("WANDB_NAME") or name
    tags = [t for t in env.get("WANDB_TAGS", "").split(",") if t] or ([name] if name else [])
    return {"name": name, "group": env.get("WANDB_RUN_GROUP") or None,
            "job_type": env.get("WANDB_JOB_TYPE") or name, "tags": tags}


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline (no account, no network) unless the user is logged in,
    and not at all under ``WANDB_MODE=disabled`` (no run folder).

    Offline runs land in ``<save_dir>/wandb/offline-run-*`` and can be uploaded later with
    ``wandb sync <that folder>``. W&B's own cache and config folders are kept under ``save_dir``
    so nothing is written to the home directory. Runs are named, grouped and tagged by
    :func:`run_identity`.
    """

    def __init__(self, save_dir: str | None = "runs", project: str = "deepfakemae",
                 name: str | None = None, offline: bool | None = None, log_model: bool = False,
                 **kwargs) -> None:
        save_dir = save_dir or "runs"
        if offline is None:
            offline = not wandb_logged_in()
        if wandb_disabled():  # not offline: Lightning would set WANDB_MODE=dryrun for that
            kwargs["mode"], offline = "disabled", False
        else:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            for var, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", ".wandb-cache"),
                             ("WANDB_CONFIG_DIR", ".wandb-config")):
                os.environ.setdefault(var, str(Path(save_dir, sub).resolve()))
        identity = run_identity(name)
        for key in ("group", "job_type", "tags"):
            kwargs.setdefault(key, identity[key])
        super().__init__(save_dir=save_dir, project=project, name=identity["name"],
                         offline=offline, log_model=log_model and not offline, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # wandb warns about the setting itself
            self._wandb_init.pop("anonymous", None)


#: columns of the results table, per branch (``<branch>/<metric>`` in results_test.json)
RESULT_METRICS = ("auc", "frame_auc", "video_ap", "video_eer", "video_acc")


def wandb_loggers(trainer) -> list[WandbLogger]:
    """The W&B loggers of ``trainer`` that log (none under ``WANDB_MODE=disabled``)."""
    if wandb_disabled():
        return []
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def log_wandb_results(trainer, results: dict[str, dict[str, float]],
                      curves: dict[str, dict[str, tuple]]) -> None:
    """Send a test's numbers to W&B as a table (``test/results``: a row per test set, a column
    per branch and metric) and its video-level ROC curves as line plots
    (``test/<set>/roc_curve``), beside the PNG figure."""
    loggers = wandb_loggers(trainer)
    if not loggers or not results:
        return
    import wandb

    branches = sorted({k.rsplit("/", 1)[0] for m in results.values() for k in m if "/" in k})
    columns = ["test set", "videos"] + [f"{b}/{m}" for b in branches for m in RESULT_METRICS]
    rows = [[name, int(m.get("num_videos", 0))] + [m.get(c, float("nan")) for c in columns[2:]]
            for name, m in sorted(results.items())]
    payload = {"test/results": wandb.Table(columns=columns, data=rows),
               "trainer/global_step": trainer.global_step}
    for name, by_branch in curves.items():
        if by_branch:
            payload[f"test/{name}/roc_curve"] = wandb.plot.line_series(
                xs=[c[0].tolist() for c in by_branch.values()],
                ys=[c[1].tolist() for c in by_branch.values()],
                keys=[f"{b} (AUC {c[2]:.3f})" for b, c in by_branch.items()],
                title=f"ROC {name} (video level)", xname="false positive rate")
    for logger in loggers:
        logger.experiment.log(payload)
