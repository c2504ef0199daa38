"""W&B as its users expect: WANDB_MODE honoured, runs named and grouped by table/variant/stage,
the effective config logged, a results table and ROC plots per test (offline runs, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfakemae.lightning_cli import effective_config
from deepfakemae.loggers import AutoWandbLogger, log_wandb_results
from deepfakemae.plans import TABLES_DIR, load_plan, plan_jobs


def pending_stages(plan, run_root, **selection):
    """The stage runs ``run_plan`` would execute now, in order (``resume`` ones included)."""
    return [j for j in plan_jobs(plan, run_root, **selection) if j.status != "done"]


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """Keep every W&B folder in this test's tmp_path; no name, group or tags inherited."""
    for var in ("WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    import wandb

    wandb.finish()
    wandb.teardown()  # W&B keeps the settings of its first run per process (e.g. disabled)


def test_wandb_mode_disabled_writes_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = AutoWandbLogger(save_dir=str(tmp_path / "stage"), name="pretrain")
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.experiment.log({"x": 1})
    import wandb

    wandb.finish()
    assert not list(tmp_path.rglob("offline-run-*")) and not list(tmp_path.rglob("run-*"))
    assert not (tmp_path / "stage" / "wandb").exists()


def test_table_runs_are_named_grouped_and_tagged(tmp_path, monkeypatch):
    plan = load_plan(TABLES_DIR / "table4.yaml", demo=True)
    job = pending_stages(plan, tmp_path, variants=["ratio_25"], stages=["finetune"])[0]
    env = job.env()
    assert env["WANDB_NAME"] == "table4/ratio_25/finetune"
    assert (env["WANDB_RUN_GROUP"], env["WANDB_JOB_TYPE"]) == ("table4/ratio_25", "finetune")
    monkeypatch.setenv("WANDB_MODE", "offline")
    for key in ("WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_JOB_TYPE", "WANDB_TAGS"):
        monkeypatch.setenv(key, env[key])
    run = AutoWandbLogger(save_dir=str(tmp_path / "stage"), name="finetune").experiment
    assert run.name == "table4/ratio_25/finetune" and run.group == "table4/ratio_25"
    assert run.job_type == "finetune" and set(run.tags) == {"table4", "ratio_25", "finetune"}


def test_a_direct_run_is_named_after_its_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = AutoWandbLogger(save_dir=str(tmp_path / "stage"), name="mapping").experiment
    assert (run.name, run.job_type, tuple(run.tags)) == ("mapping", "mapping", ("mapping",))


def test_results_table_and_roc_plots_reach_the_run(tmp_path, monkeypatch):
    from lightning.pytorch import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = AutoWandbLogger(save_dir=str(tmp_path / "detector"), name="detector")
    trainer = Trainer(logger=logger, accelerator="cpu", enable_progress_bar=False)
    results = {"celebdf": {"num_videos": 4.0, "fused/auc": 0.75, "F/auc": 0.5, "M/auc": 1.0}}
    fpr, tpr = np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])
    curves = {"celebdf": {"fused": (fpr, tpr, 0.75), "F": (fpr, fpr, 0.5)}}
    log_wandb_results(trainer, results, curves)
    import wandb

    wandb.finish()
    (run_dir,) = (tmp_path / "detector" / "wandb").glob("offline-run-*")
    (table,) = run_dir.rglob("results_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"][:3] == ["test set", "videos", "F/auc"]
    assert data["data"][0][:3] == ["celebdf", 4, 0.5]
    assert list(run_dir.rglob("roc_curve_table_*.table.json"))


def test_logged_config_carries_the_checkpoints_preset(tmp_path):
    from deepfakemae.modules.finetune import FinetuneModule
    from deepfakemae.modules.pretrain import MAEPretrainModule

    stage1 = MAEPretrainModule(preset="mae_vit_micro")
    ckpt = {"state_dict": stage1.state_dict(), "hyper_parameters": dict(stage1.hparams)}
    stage1.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "stage1.ckpt")
    module = FinetuneModule(mae_checkpoint=str(tmp_path / "stage1.ckpt"),
                            preset="mae_vit_base_patch16")
    config = {"model": {"init_args": {"preset": "mae_vit_base_patch16",
                                      "mae_checkpoint": str(tmp_path / "stage1.ckpt")}}}
    assert effective_config(config, module.hparams)["model"]["init_args"]["preset"] == \
        "mae_vit_micro"
    assert Path(config["model"]["init_args"]["mae_checkpoint"]).name == "stage1.ckpt"


def test_wandb_online_without_network_logs_offline_within_seconds(tmp_path, monkeypatch,
                                                                   capsys):
    import time

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")  # 40 chars
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # loopback, nothing listens
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    logger = AutoWandbLogger(save_dir=str(tmp_path / "stage"), name="pretrain")
    logger.log_metrics({"train/loss": 1.0}, step=0)  # starts the run
    assert time.monotonic() - start < 30  # wandb alone waits ~90 s, then raises CommError
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the W&B server http://127.0.0.1:9 is unreachable" in err[0]
    assert "logging offline" in err[0] and "wandb sync" in err[0]
    import wandb

    wandb.finish()
    assert list((tmp_path / "stage").rglob("offline-run-*"))



def test_wandb_online_start_that_fails_logs_offline(tmp_path, monkeypatch, capsys):
    """A server that answers but refuses the run (HTTP 401 on a loopback port)."""
    import http.server
    import threading
    import time

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _refuse(self):
            body = b'{"errors": [{"message": "invalid api key"}]}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        start = time.monotonic()
        logger = AutoWandbLogger(save_dir=str(tmp_path / "stage"), name="pretrain")
        logger.log_metrics({"train/loss": 1.0}, step=0)  # was: a CommError out of fit
        assert time.monotonic() - start < 30
        err = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
        assert len(err) == 1 and "W&B could not start an online run (CommError" in err[0]
        import wandb

        wandb.finish()
        assert list((tmp_path / "stage").rglob("offline-run-*"))
    finally:
        server.shutdown()


@pytest.mark.slow
def test_fit_with_wandb_online_and_no_network_trains_and_checkpoints(
        tmp_path, monkeypatch, capsys, ffpp_cache, celebdf_cache):
    import time

    from test_stage2 import EXP, SMALL

    from deepfakemae.cli import main

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "ffpp_c23").symlink_to(ffpp_cache)
    (cache_dir / "celebdf").symlink_to(celebdf_cache)
    for key, value in {"CACHE_DIR": str(cache_dir), "RUN_DIR": str(tmp_path / "runs"),
                       "WANDB_MODE": "online", "WANDB_API_KEY": "a" * 40,
                       "WANDB_BASE_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["fit", "-c", str(EXP / "pretrain.yaml"),
                 *(a for a in SMALL if "logger" not in a),  # the configured W&B logger
                 "--trainer.max_steps=2", "--model.init_args.preset=mae_vit_micro",
                 "--model.init_args.init_weights=null", "--data.init_args.batch_size=4"]) == 0
    assert time.monotonic() - start < 60  # was ~100 s, then a CommError and no checkpoint
    stage = tmp_path / "runs" / "pretrain"
    assert (stage / "checkpoints" / "last.ckpt").is_file()
    assert list((stage / "wandb").glob("offline-run-*"))
    notes = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert len(notes) == 1 and "unreachable" in notes[0]
