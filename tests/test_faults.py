"""The fault matrix: SIGTERM, SIGINT and kill -9 of a stage process and of the plan runner at a
random training step, then a rerun; the final checkpoints and results equal an uninterrupted
run's (same seed), and no status says done early. Tiny scale: micro presets at 64 px on the
small fixture cache, 6 steps per fit stage (4 batches per epoch, validation and a ``last.ckpt``
at each epoch end, so faults land mid-epoch and after a checkpoint)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepfakemae.plans import load_plan, plan_jobs
from deepfakemae.runstate import LOCK_FILE, stage_state
from tests.conftest import FFPP_FIXTURE_METHODS

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"
STEPS = 6
FIT_STAGES = ("pretrain", "finetune", "mapping")

TRAINER = {"accelerator": "cpu", "precision": "32-true", "logger": False,
           "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": -1,
           "max_steps": STEPS, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0}


def _checkpoint(monitor: str, mode: str) -> dict:
    return {"class_path": "deepfakemae.callbacks.FinalModelCheckpoint",
            "init_args": {"dirpath": None, "filename": "{epoch:03d}-{step:07d}",
                          "monitor": monitor, "mode": mode, "save_last": True,
                          "enable_version_counter": False}}


FAULT = {"class_path": "faults.FaultAtStep"}


def _overlays(cache: Path) -> dict[str, dict]:
    test = [{"name": "ffpp", "cache": str(cache / "ffpp_c23"), "dataset": "ffpp",
             "split": "test"}]
    sources = {split: [{"name": "ffpp", "cache": str(cache / "ffpp_c23"), "dataset": "ffpp",
                        "split": split, "methods": list(methods)}]
               for split, methods in FFPP_FIXTURE_METHODS.items()}  # what the fixture holds
    data = {"img_size": 64, "num_workers": 0}
    return {
        "pretrain": {"trainer": {**TRAINER, "callbacks": [_checkpoint("val/loss", "min"), FAULT]},
                     "model": {"init_args": {"preset": "mae_vit_micro", "init_weights": None,
                                             "image_log_every_n_steps": 0}},
                     "data": {"init_args": {**data, "batch_size": 4, "samples_per_video": 4}}},
        "finetune": {"trainer": {**TRAINER, "callbacks": [_checkpoint("val/ffpp/auc", "max"),
                                                          FAULT]},
                     "data": {"init_args": {**data, "num_workers": 1, "batch_size": 4,
                                            "samples_per_video": 2, "test": test, **sources}}},
        "mapping": {"trainer": {**TRAINER, "callbacks": [_checkpoint("val/ffpp/auc", "max"),
                                                         FAULT]},
                    "model": {"init_args": {"pretrained_backbone": False,
                                            "image_log_every_n_steps": 0}},
                    "data": {"init_args": {**data, "batch_size": 8, "samples_per_video": 4,
                                           "test": test, **sources}}},
        "detector": {"trainer": {"accelerator": "cpu", "logger": False,
                                 "enable_progress_bar": False, "callbacks": [FAULT]},
                     "data": {"init_args": {**data, "batch_size": 1, "test": test}}},
    }


@pytest.fixture(scope="module")
def fault_plan(tmp_path_factory, ffpp_cache) -> dict:
    """A one-variant plan of all four stages on the fixture cache, and the environment its
    runs need (tests/ on PYTHONPATH for the fault callback)."""
    root = tmp_path_factory.mktemp("faults")
    cache = root / "cache"
    cache.mkdir()
    (cache / "ffpp_c23").symlink_to(ffpp_cache)
    configs = {}
    for stage, overlay in _overlays(cache).items():
        path = root / f"{stage}.yaml"
        path.write_text(json.dumps(overlay))
        configs[stage] = [str(EXP / f"{stage}.yaml"), str(path)]
    plan = root / "faults.yaml"
    plan.write_text(json.dumps({
        "name": "faults", "configs": configs,
        "stage_args": {s: {} for s in configs},
        "variants": {"main": {s: {} for s in configs}}, "demo": {}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "CACHE_DIR": str(cache)}
    for name in ("RUN_DIR", "DEMO_CACHE", "FAULTS", "FAULT_DIR"):
        env.pop(name, None)
    return {"root": root, "plan": plan, "env": env}


def _run(fault_plan: dict, run_root: Path, faults: str = "", timeout: float = 600,
         plan: Path | None = None) -> subprocess.CompletedProcess:
    env = {**fault_plan["env"], "FAULTS": faults, "FAULT_DIR": str(run_root)}
    run_root.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "deepfakemae.cli", "run",
                           str(plan or fault_plan["plan"]), "--run-root", str(run_root)],
                          env=env, cwd=fault_plan["root"], capture_output=True, text=True,
                          timeout=timeout)


def _states(fault_plan: dict, run_root: Path) -> dict[str, str]:
    plan = load_plan(fault_plan["plan"])
    return {job.stage: job.status for job in plan_jobs(plan, run_root)}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {**state["state_dict"], "global_step": torch.tensor(state["global_step"])}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def reference(fault_plan) -> Path:
    """The uninterrupted run."""
    run_root = fault_plan["root"] / "reference"
    start = time.monotonic()
    out = _run(fault_plan, run_root)
    assert out.returncode == 0, out.stderr[-3000:]
    print(f"reference run: {time.monotonic() - start:.1f} s")
    return run_root / "faults" / "main"


#: (stage, signal, target) in the order they fire; each one stops a run, the next run resumes.
#: A representative subset (each stage faulted, each signal on a stage process, SIGINT to the
#: stage's whole process group with a loader worker in it, the runner killed with SIGTERM and
#: with -9), not every stage x signal pair: each run costs process starts.
CHAIN = [("pretrain", "SIGTERM", "self"), ("pretrain", "SIGKILL", "self"),
         ("finetune", "SIGINT", "group"), ("finetune", "SIGTERM", "parent"),
         ("mapping", "SIGKILL", "parent"), ("detector", "SIGTERM", "self")]
EXIT = {("SIGTERM", "self"): 143, ("SIGINT", "group"): 130, ("SIGKILL", "self"): 1,
        ("SIGTERM", "parent"): 143, ("SIGKILL", "parent"): -9}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_fault_matrix_resumes_to_the_uninterrupted_weights(fault_plan, reference):
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    faults = ",".join(f"{stage}:{sig}:{target}:{rng.randint(1, STEPS - 1)}"
                      for stage, sig, target in CHAIN)
    note = f"FAULT_SEED={seed} FAULTS={faults}"
    run_root = fault_plan["root"] / "faulty"
    run_dir = run_root / "faults" / "main"
    stage_order = [*FIT_STAGES, "detector"]
    for i, (stage, sig, target) in enumerate(CHAIN):
        start = time.monotonic()
        out = _run(fault_plan, run_root, faults)
        print(f"fault {i}: {faults.split(',')[i]}: exit {out.returncode}, "
              f"{time.monotonic() - start:.1f} s")
        assert (run_root / f"fault-{i}").exists(), f"{note}: fault {i} did not fire\n{out.stderr}"
        assert out.returncode == EXIT[sig, target], f"{note}: fault {i}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, f"{note}: fault {i}\n{out.stderr[-3000:]}"
        if target == "parent" and sig == "SIGKILL":  # the orphaned stage stops by itself
            holder = json.loads((run_dir / stage / LOCK_FILE).read_text()) \
                if (run_dir / stage / LOCK_FILE).exists() else None
            deadline = time.monotonic() + 120  # a bound on the wait, not a speed requirement
            while holder and _alive(holder["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert holder is None or not _alive(holder["pid"]), f"{note}: orphan lives on"
        states = _states(fault_plan, run_root)
        faulted = stage_order.index(stage)
        assert all(states[s] == "done" for s in stage_order[:faulted]), (note, states)
        assert all(states[s] != "done" for s in stage_order[faulted:]), (note, states)
        if sig in ("SIGTERM", "SIGINT") and stage != "detector":  # a resumable checkpoint
            state = stage_state(run_dir / stage, "fit")
            assert state.status == "resume", (note, state)
    start = time.monotonic()
    out = _run(fault_plan, run_root, faults)
    print(f"final rerun: exit {out.returncode}, {time.monotonic() - start:.1f} s")
    assert out.returncode == 0, f"{note}\n{out.stderr[-3000:]}"
    assert all(s == "done" for s in _states(fault_plan, run_root).values())
    for stage in FIT_STAGES:
        got = _weights(run_dir / stage / "checkpoints" / "last.ckpt")
        want = _weights(reference / stage / "checkpoints" / "last.ckpt")
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{note}: {stage} differs from the uninterrupted run in {different[:5]}"
    got = json.loads((run_dir / "detector" / "results_test.json").read_text())
    want = json.loads((reference / "detector" / "results_test.json").read_text())
    provenance = got.pop("_provenance")
    want.pop("_provenance")
    assert got == want, note
    detector = next(j for j in plan_jobs(load_plan(fault_plan["plan"]), run_root)
                    if j.stage == "detector")
    assert (provenance["plan"], provenance["variant"], provenance["config_hash"]) == \
        ("faults", "main", detector.config_hash())


def _fit_in_process(fault_plan: dict, run_dir: Path, monkeypatch, faults: str = "") -> int:
    monkeypatch.setenv("CACHE_DIR", fault_plan["env"]["CACHE_DIR"])
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("RUN_DIR", str(run_dir))
    monkeypatch.setenv("FAULTS", faults)
    monkeypatch.setenv("FAULT_DIR", str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    from deepfakemae.cli import main

    return main(["fit", "-c", str(EXP / "pretrain.yaml"), "-c",
                 str(fault_plan["root"] / "pretrain.yaml"), "--ckpt_path=last"])


@pytest.mark.slow
def test_slurm_requeue_signal_then_sigterm_resumes_exactly(fault_plan, monkeypatch, tmp_path,
                                                           capsys):
    """Under SLURM (simulated: its variables set, a fake ``scontrol`` on PATH), Lightning's
    auto-requeue handles SIGUSR1 (``hpc_ckpt_1.ckpt`` + ``scontrol requeue <job>``); the SIGTERM
    that follows stops the fit with exit code 143, saves ``last.ckpt`` and leaves the stage not
    done; the requeued job's same command line resumes and ends with the uninterrupted weights."""
    assert _fit_in_process(fault_plan, tmp_path / "reference", monkeypatch) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "pretrain",
                        "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node1",
                        "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(name, value)
    run_dir = tmp_path / "requeued"
    faults = "pretrain:SIGUSR1:self:2,pretrain:SIGTERM:self:3"
    assert _fit_in_process(fault_plan, run_dir, monkeypatch, faults) == 143
    stage = run_dir / "pretrain"
    assert calls.read_text().split() == ["requeue", "4242"]
    assert (stage / "hpc_ckpt_1.ckpt").exists()
    state = stage_state(stage, "fit")
    assert (state.status, state.checkpoint) == ("resume", stage / "checkpoints" / "last.ckpt")
    assert torch.load(state.checkpoint, weights_only=True)["global_step"] == 3
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert _fit_in_process(fault_plan, run_dir, monkeypatch, faults) == 0  # the requeued job
    assert stage_state(stage, "fit").status == "done"
    got = _weights(stage / "checkpoints" / "last.ckpt")
    want = _weights(tmp_path / "reference" / "pretrain" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_a_changed_plan_retrains_the_changed_stage_and_what_reads_it(fault_plan, reference,
                                                                     tmp_path):
    """A finished run, then the plan gives the Finetuning Network another budget: the next
    `deepfakemae run` trains that stage anew (the old one set aside, not resumed over) and tests
    the detector again; stage 1 and the Mapping Network stay done; a third run does nothing."""
    run_root = tmp_path / "runs"
    shutil.copytree(reference.parent.parent, run_root)  # copy2: the stages' times are kept
    changed = json.loads(Path(fault_plan["plan"]).read_text())
    changed["variants"]["main"]["finetune"] = {"args": {"trainer": {"max_steps": STEPS + 2}}}
    plan_path = tmp_path / "faults.yaml"
    plan_path.write_text(json.dumps(changed))
    run_dir = run_root / "faults" / "main"
    pretrain_ckpt = run_dir / "pretrain" / "checkpoints" / "last.ckpt"
    before = pretrain_ckpt.stat().st_mtime_ns
    out = _run(fault_plan, run_root, plan=plan_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "faults: 2 of 4 stage runs to do" in out.stdout, out.stdout
    for stage in ("pretrain", "mapping"):
        assert f"skip faults/main {stage}: done" in out.stdout
    assert "run faults/main finetune" in out.stdout and "run faults/main detector" in out.stdout
    assert sorted(p.name.split("-")[0] for p in (run_dir / ".previous").iterdir()) == \
        ["detector", "finetune"]
    record = json.loads((run_dir / "finetune" / "done.json").read_text())
    jobs = {j.stage: j for j in plan_jobs(load_plan(plan_path), run_root)}
    assert record["global_step"] == STEPS + 2
    assert record["settings_hash"] == jobs["finetune"].settings_hash()
    assert pretrain_ckpt.stat().st_mtime_ns == before
    assert {j.status for j in jobs.values()} == {"done"}
    again = _run(fault_plan, run_root, plan=plan_path)
    assert again.returncode == 0 and "faults: 0 of 4 stage runs to do" in again.stdout, \
        again.stdout
