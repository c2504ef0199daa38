"""Done means finished: a stage's state from its own completion record, malformed results never
count, results files are written atomically and carry their provenance, a stage folder is
locked by its live trainer, and a runner's stage process dies with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deepfakemae.cli import main
from deepfakemae.plans import PlanError, load_plan, plan_jobs, run_plan
from deepfakemae.results import ResultsError, read_results, write_results
from deepfakemae.runstate import (
    LOCK_FILE,
    PARENT_ENV,
    StageLockedError,
    acquire_lock,
    lock_holder,
    release_lock,
    stage_state,
    write_done,
)

REPO = Path(__file__).resolve().parents[1]
GOOD = {"celebdf": {"fused/auc": 0.75, "num_videos": 4}}
MALFORMED = {"empty": "", "truncated": '{"celebdf": {"fused/auc": 0.7', "list": "[]",
             "text value": '{"celebdf": {"fused/auc": "high"}}', "no sets": "{}",
             "set not a mapping": '{"celebdf": [0.5]}'}


def _fit_stage(stage_dir: Path, done: bool, size: int = 10) -> Path:
    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"x" * size)
    if done:
        write_done(stage_dir, {"global_step": 400, "checkpoint": "checkpoints/last.ckpt",
                               "checkpoint_bytes": size})
    return ckpt


def test_a_checkpoint_without_a_completion_record_is_not_done(tmp_path):
    stage = tmp_path / "pretrain"
    ckpt = _fit_stage(stage, done=False)  # what a SIGTERM-ed fit left before: last.ckpt only
    state = stage_state(stage, "fit")
    assert (state.status, state.checkpoint) == ("resume", ckpt)
    write_done(stage, {"global_step": 400, "checkpoint": "checkpoints/last.ckpt",
                       "checkpoint_bytes": 10})
    assert stage_state(stage, "fit").status == "done"
    ckpt.write_bytes(b"y" * 3)  # the checkpoint was rewritten after the record
    state = stage_state(stage, "fit")
    assert state.status == "resume" and "rewritten" in state.reason
    (stage / "done.json").write_text('{"global_step": 4')  # a torn record
    state = stage_state(stage, "fit")
    assert state.status == "resume" and "done.json is unreadable" in state.reason
    assert stage_state(tmp_path / "finetune", "fit").status == "pending"


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_results_are_not_done_and_named(tmp_path, kind, capsys):
    path = tmp_path / "detector" / "results_test.json"
    path.parent.mkdir(parents=True)
    path.write_text(MALFORMED[kind])
    with pytest.raises(ResultsError, match=str(path)):
        read_results(path)
    state = stage_state(path.parent, "test")
    assert state.status == "pending" and str(path) in state.reason


def test_dry_run_names_a_malformed_results_file(tmp_path, capsys):
    plan = load_plan("table1", demo=True)
    for stage in ("pretrain", "finetune", "mapping"):
        _fit_stage(tmp_path / "table1/main" / stage, done=True)
    results = tmp_path / "table1/main/detector/results_test.json"
    results.parent.mkdir(parents=True)
    results.write_text("")
    run_plan(plan, tmp_path, variants=["main"], dry_run=True)
    out = capsys.readouterr().out
    assert "# table1 (demo): 1 of 4 stage runs pending" in out
    assert f"# pending: table1/main detector: {results} is empty" in out
    results.write_text(json.dumps(GOOD))
    assert [j.status for j in plan_jobs(plan, tmp_path, variants=["main"])] == ["done"] * 4


def _finish_as_planned(plan, run_root: Path, **record) -> dict[str, object]:
    """Every stage of ``plan``'s ``main`` variant done, each fit's record carrying the settings
    hash its plan job gives (what a run of that plan writes); ``record`` overrides keys."""
    jobs = {j.stage: j for j in plan_jobs(plan, run_root, variants=["main"])}
    for stage in ("pretrain", "finetune", "mapping"):
        _fit_stage(jobs[stage].stage_dir, done=False)
        write_done(jobs[stage].stage_dir, {"global_step": 400, "checkpoint": "checkpoints/last.ckpt",
                                           "checkpoint_bytes": 10, "finished": time.time(),
                                           "settings_hash": jobs[stage].settings_hash(),
                                           **record})
    results = jobs["detector"].stage_dir / "results_test.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(GOOD))
    return jobs


def _states(plan, run_root: Path) -> dict[str, tuple[str, str]]:
    return {j.stage: (j.status, j.reason) for j in plan_jobs(plan, run_root, variants=["main"])}


def test_a_fit_done_with_other_settings_runs_again_and_so_does_what_reads_it(tmp_path, capsys):
    plan = load_plan("table1", demo=True)
    jobs = _finish_as_planned(plan, tmp_path)
    assert {s: st for s, (st, _) in _states(plan, tmp_path).items()} == dict.fromkeys(jobs, "done")
    record = json.loads((jobs["finetune"].stage_dir / "done.json").read_text())
    write_done(jobs["finetune"].stage_dir, {**record, "settings_hash": "0123456789abcdef"})
    states = _states(plan, tmp_path)
    assert states["pretrain"][0] == states["mapping"][0] == "done"
    assert states["finetune"][0] == "pending"
    assert "stale: it finished with other settings (settings hash 0123456789abcdef" in \
        states["finetune"][1]
    assert states["detector"] == ("pending", states["detector"][1])
    assert "its input table1/main finetune runs again first" in states["detector"][1]
    finetune = next(j for j in plan_jobs(plan, tmp_path, variants=["main"])
                    if j.stage == "finetune")
    assert finetune.restart and "--fresh" in finetune.args  # not a resume of the old run
    assert not any(a.startswith("--ckpt_path=") for a in finetune.args)
    run_plan(plan, tmp_path, variants=["main"], dry_run=True)
    out = capsys.readouterr().out
    assert "# table1 (demo): 2 of 4 stage runs pending" in out
    assert "# pending: table1/main finetune: stale: it finished with other settings" in out


def test_a_record_without_a_settings_hash_is_stale_on_another_schedule(tmp_path):
    plan = load_plan("table1", demo=True)
    jobs = _finish_as_planned(plan, tmp_path, settings_hash=None)
    planned = int(jobs["mapping"].planned("max_steps"))
    assert isinstance(planned, int) and planned > 0  # the demo overlay's own budget
    record = json.loads((jobs["mapping"].stage_dir / "done.json").read_text())
    write_done(jobs["mapping"].stage_dir, {**record, "max_steps": planned})
    assert {st for st, _ in _states(plan, tmp_path).values()} == {"done"}
    write_done(jobs["mapping"].stage_dir, {**record, "max_steps": planned * 4})
    states = _states(plan, tmp_path)
    assert states["mapping"][0] == "pending"
    assert f"it finished a max_steps={planned * 4} schedule; the plan now gives {planned}" in \
        states["mapping"][1]
    assert states["finetune"][0] == "done" and states["detector"][0] == "pending"


def test_a_stage_whose_input_was_rewritten_after_it_finished_is_stale(tmp_path):
    plan = load_plan("table1", demo=True)
    jobs = _finish_as_planned(plan, tmp_path)
    pretrain = jobs["pretrain"].stage_dir / "checkpoints" / "last.ckpt"
    later = time.time() + 60  # stage 1 trained again (by hand) after the branches finished
    os.utime(pretrain, (later, later))
    (jobs["pretrain"].stage_dir / "done.json").touch()
    os.utime(jobs["pretrain"].stage_dir / "done.json", (later, later))
    states = _states(plan, tmp_path)
    assert states["pretrain"][0] == "done"
    for stage in ("finetune", "mapping"):
        assert states[stage][0] == "pending"
        assert f"its input {pretrain} was rewritten after it finished" in states[stage][1]
    assert states["detector"][0] == "pending"
    only = plan_jobs(plan, tmp_path, variants=["main"], stages=["detector"])
    assert [j.status for j in only] == ["done"]  # the branches' checkpoints predate its results


def test_settings_hash_follows_values_not_comments(tmp_path):
    from deepfakemae.plans import Job

    config = tmp_path / "stage.yaml"
    config.write_text("trainer:\n  max_steps: 150  # the demo budget\n")

    def job() -> Job:
        return Job("t", "v", "finetune", tmp_path, ["fit", "-c", str(config), "--ckpt_path=last"],
                   tmp_path / "x", "pending", [])

    settings, text = job().settings_hash(), job().config_hash()
    config.write_text("# a new comment\ntrainer:\n  max_steps: 150\n")
    assert job().settings_hash() == settings
    assert job().config_hash() != text  # results keep the hash of the exact text
    config.write_text("trainer:\n  max_steps: 600\n")
    assert job().settings_hash() != settings
    resumed = Job("t", "v", "finetune", tmp_path, ["fit", "-c", str(config), "--fresh"],
                  tmp_path / "x", "pending", [])
    assert resumed.settings_hash() == job().settings_hash()  # resume switches do not count


def test_results_are_replaced_whole_while_a_reader_reads(tmp_path):
    path = tmp_path / "results_test.json"
    big = {f"set{i}": {f"m{j}": j / 7 for j in range(50)} for i in range(40)}
    write_results(big, path)
    bad, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                read_results(path)
            except ResultsError as exc:
                bad.append(str(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(150):
            write_results(big, path, {"plan": "table1", "variant": "main"})
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert read_results(path).provenance == {"plan": "table1", "variant": "main"}
    assert [p.name for p in tmp_path.iterdir()] == ["results_test.json"]  # no temp file left


# -- report: malformed and foreign results --------------------------------------------------------
def _report_runs(tmp_path: Path, provenance: dict | None) -> Path:
    root = tmp_path / "runs"
    for variant in ("ratio_25", "ratio_75"):
        write_results({"celebdf": {"fused/auc": 0.8}}, root / f"table4/{variant}/detector/"
                      "results_test.json", provenance and {**provenance, "variant": variant})
    return root


def test_report_names_a_truncated_results_file_instead_of_a_traceback(tmp_path, capsys):
    root = _report_runs(tmp_path, {"plan": "table4"})
    bad = root / "table4/ratio_75/detector/results_test.json"
    bad.write_text('{"celebdf": {"fused/auc": 0.8')
    assert main(["report", str(root / "table4"), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "JSONDecodeError" not in captured.err
    assert f"{bad} is not valid JSON" in captured.err and "deepfakemae run table4" in captured.err
    assert "| **Celeb-DF (ours)** | 80.0 | — | — |" in captured.out  # ratio_50 unrun, 75 bad


def test_report_refuses_results_of_another_plan_or_variant(tmp_path, capsys):
    root = _report_runs(tmp_path, {"plan": "table4"})
    copied = root / "table4/ratio_75/detector/results_test.json"
    write_results({"celebdf": {"fused/auc": 0.9}}, copied, {"plan": "table5", "variant": "RP"})
    assert main(["report", str(root / "table4"), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert f"{copied} holds results of table5/RP, not of table4/ratio_75" in captured.err
    assert "| **Celeb-DF (ours)** | 80.0 | — | — |" in captured.out
    # results of the right variant are used
    write_results({"celebdf": {"fused/auc": 0.9}}, copied, {"plan": "table4",
                                                            "variant": "ratio_75"})
    assert main(["report", str(root / "table4"), "--output", str(tmp_path / "out")]) == 0
    assert "| **Celeb-DF (ours)** | 80.0 | — | 90.0 |" in capsys.readouterr().out


def test_a_torn_plan_record_is_named(tmp_path, capsys):
    root = _report_runs(tmp_path, None)
    (root / "table4" / "plan.json").write_text('{"path": ')
    assert main(["report", str(root / "table4")]) == 2
    assert "plan.json is unreadable" in capsys.readouterr().err


# -- the lock and the runner's children -----------------------------------------------------------
def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_lock(stage_dir: Path, pid: int) -> None:
    import socket

    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                   "time": time.time()}))


def test_a_live_trainer_holds_its_stage_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    stage = tmp_path / "table1/main/pretrain"
    other = _sleeper()
    try:
        _write_lock(stage, other.pid)
        with pytest.raises(StageLockedError, match=f"PID {other.pid} on host"):
            acquire_lock(stage)
        with pytest.raises(PlanError, match=f"in use by another trainer .PID {other.pid}"):
            run_plan(load_plan("table1", demo=True), tmp_path, variants=["main"],
                     stages=["pretrain"])
        assert not (stage / "checkpoints").exists()  # nothing ran
    finally:
        other.kill()
        other.wait()
    assert lock_holder(stage) is None  # its writer is gone
    acquire_lock(stage)
    assert "taking over the stale lock" in capsys.readouterr().err
    assert json.loads((stage / LOCK_FILE).read_text())["pid"] == os.getpid()
    release_lock(stage)
    assert not (stage / LOCK_FILE).exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_stage_process_stops_when_its_runner_is_killed(tmp_path):
    ready = tmp_path / "watching"
    child_code = ("from deepfakemae.runstate import exit_with_parent; import pathlib, time; "
                  f"assert exit_with_parent(); pathlib.Path({str(ready)!r}).touch(); "
                  "time.sleep(120)")
    parent_code = ("import os, subprocess, sys, time; "
                   f"env = {{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}; "
                   f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}], env=env); "
                   "print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 120  # bounds on the waits, not speed requirements
    while time.monotonic() < deadline and not ready.exists():
        time.sleep(0.05)
    assert ready.exists(), "the stage process never started watching its runner"
    parent.kill()  # kill -9 of the runner
    parent.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, 9)
    assert not alive, "the stage process outlived its killed runner"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
