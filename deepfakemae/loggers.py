"""Experiment loggers: W&B, offline unless the user has logged in."""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger


def wandb_logged_in() -> bool:
    """True when W&B credentials are available (``WANDB_API_KEY`` or ``~/.netrc`` entry)."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(encoding="utf-8",
                                                                 errors="ignore")


#: seconds to wait for a TCP connection to the W&B server before logging offline
WANDB_PROBE_SECONDS = 3.0


def wandb_server() -> str:
    """The W&B server URL runs go to: ``WANDB_BASE_URL`` or ``https://api.wandb.ai``."""
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def wandb_unreachable(timeout: float = WANDB_PROBE_SECONDS) -> str | None:
    """Why the W&B server (or the HTTP(S) proxy in front of it) takes no TCP connection
    within ``timeout`` seconds, or ``None`` when it does."""
    url = urlsplit(wandb_server())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or host, via.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


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
    ``wandb sync <that folder>``. An online run whose server takes no connection within
    :data:`WANDB_PROBE_SECONDS` (no network), or whose start fails, logs offline instead,
    with one line on stderr, rather than stopping training before its first checkpoint. W&B's own cache and config folders are kept under ``save_dir``
    so nothing is written to the home directory. Runs are named, grouped and tagged by
    :func:`run_identity`.
    """

    def __init__(self, save_dir: str | None = "runs", project: str = "deepfakemae",
                 name: str | None = None, offline: bool | None = None, log_model: bool = False,
                 **kwargs) -> None:
        save_dir = save_dir or "runs"
        if offline is None:
            offline = not wandb_logged_in()
        if not offline and not wandb_disabled():
            why = wandb_unreachable()
            if why is not None:
                offline = True
                _fall_back_note(f"the W&B server {wandb_server()} is unreachable ({why})",
                                save_dir)
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

    @property
    def experiment(self):
        """The W&B run; an online start that fails (server error, timeout) retries offline."""
        try:
            return super().experiment
        except Exception as exc:  # wandb's CommError, UsageError, ... on an online start
            if self._offline or wandb_disabled():
                raise
            import wandb

            wandb.finish()
            _fall_back_note(f"W&B could not start an online run ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})",
                            self._wandb_init.get("dir") or "runs")
            self._offline, self._log_model, self._experiment = True, False, None
            self._wandb_init["mode"] = "offline"  # wandb keeps its first settings otherwise
            return super().experiment


def _fall_back_note(why: str, save_dir: str) -> None:
    """The one line saying a run logs offline instead, and how to upload it later."""
    print(f"note: {why}; logging offline to {Path(save_dir) / 'wandb'} (upload later with "
          "`wandb sync <offline-run folder>`)", file=sys.stderr)


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
