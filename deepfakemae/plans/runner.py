"""Running a plan: each pending stage as its own ``deepfakemae fit|test`` process, in order,
after checking that its configs and input checkpoints can exist and that no live trainer holds
its folder.

A stage process dies with the runner (it watches the runner's PID, ``DEEPFAKEMAE_PARENT_PID``,
and stops gracefully when it is gone, e.g. after ``kill -9``). It runs in its own session, so a
SIGINT or SIGTERM reaches it once, forwarded by the runner: it saves a resumable checkpoint and
the runner stops with :class:`StageFailed` (exit code 130 / 143).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deepfakemae.errors import DeepfakeMAEError
from deepfakemae.faces.files import atomic_write_text
from deepfakemae.plans.jobs import STAGE_INPUTS, Job, plan_jobs, stage_state_of
from deepfakemae.plans.load import PLAN_RECORD, Plan, PlanError
from deepfakemae.runstate import PARENT_ENV, describe, lock_holder

#: signals the runner passes on to its stage process
FORWARDED = (signal.SIGINT, signal.SIGTERM)


class StageFailed(DeepfakeMAEError, RuntimeError):
    """A stage process failed or was interrupted; ``exit_code`` is what ``deepfakemae run``
    (and ``demo``) exits with: 130 / 143 after SIGINT / SIGTERM, else 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _run_stage(job: Job) -> None:
    """Run one stage as its own process (``python -m deepfakemae.cli <fit|test> ...``).

    A process per stage gives each stage a fresh DDP world on multi-GPU machines (Lightning's
    launcher re-executes exactly this command for the other ranks) and frees its memory after.
    SIGINT / SIGTERM sent to the runner are forwarded to the stage, whose graceful stop (a
    resumable checkpoint) the runner waits for; :class:`StageFailed` when it did not end well.
    """
    env = {**os.environ, **job.env(), PARENT_ENV: str(os.getpid())}
    received: list[int] = []
    proc = subprocess.Popen([sys.executable, "-m", "deepfakemae.cli", *job.args], env=env,
                            start_new_session=True)

    def forward(signum, frame) -> None:
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum)

    saved = {}
    try:
        for signum in FORWARDED:
            try:
                saved[signum] = signal.signal(signum, forward)
            except ValueError:  # not the main thread: no forwarding
                pass
        code = proc.wait()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if proc.poll() is None:  # an error in the runner itself: do not leave the stage behind
            proc.terminate()
            proc.wait()
    if received:
        name = signal.Signals(received[0]).name
        raise StageFailed(f"{job.label}: interrupted by {name} (stage exit code {code}); "
                          f"rerun the same command to resume it", 128 + received[0])
    if code != 0:
        raise StageFailed(f"{job.label} failed (exit code {code}); its log is above and under "
                          f"{job.stage_dir}", code if code in (130, 143) else 1)


def _set_aside(job: Job) -> None:
    """Move a finished stage folder to ``<RUN_DIR>/.previous/`` before a fresh rerun (Lightning
    would otherwise write ``last-v1.ckpt`` beside the old ``last.ckpt``)."""
    stage_dir = job.run_dir / job.stage
    if stage_dir.exists():
        target = job.run_dir / ".previous" / f"{job.stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage_dir), str(target))
        print(f"    previous {job.stage} run moved to {target}", flush=True)


def write_plan_record(plan: Plan, run_root: str | Path) -> Path:
    """``<run root>/<table>/plan.json``: the resolved plan the runs used (read by the report)."""
    out = Path(run_root) / plan.name / PLAN_RECORD
    if out.exists() and _read_record(out).get("demo") != plan.demo:
        kinds = ("paper", "demo") if plan.demo else ("demo", "paper")
        raise PlanError(f"{out.parent} holds {kinds[0]} runs of {plan.name}; put the {kinds[1]} "
                        "runs under another --run-root so the two can never be mixed up")
    record = {"path": str(plan.path.resolve()), "demo": plan.demo, "plan": plan.resolved}
    atomic_write_text(out, json.dumps(record, indent=2))
    return out


def _read_record(path: Path) -> dict:
    """A ``plan.json``; :class:`PlanError` naming it when it is unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path} is unreadable ({exc}); remove it (the next `deepfakemae "
                        "run` writes it again)") from None
    if not isinstance(record, dict):
        raise PlanError(f"{path} is not a plan record; remove it (the next `deepfakemae run` "
                        "writes it again)")
    return record


def run_plan(plan: Plan, run_root: str | Path, fresh: bool = False,
             stages: Sequence[str] | None = None, dry_run: bool = False,
             variants: Sequence[str] | None = None) -> list[Job]:
    """Run the plan's pending stages in order (in this process) and return the jobs run.

    Each stage runs with ``RUN_DIR=<run root>/<table>/<variant>`` and the plan's ``env``;
    ``CACHE_DIR`` / ``DEMO_CACHE`` of this process pass through where the plan sets neither.
    Done stages are skipped unless ``fresh`` or stale (:func:`deepfakemae.plans.jobs.
    stale_reason`: the plan gives other settings, or an input runs again); a restarted stage's
    old folder is moved to ``<RUN_DIR>/.previous/`` first. ``dry_run`` prints the shell line of
    every pending stage (one per line, ready to submit as a job) and runs nothing.
    """
    jobs = plan_jobs(plan, run_root, variants, stages, fresh)
    todo = [j for j in jobs if j.status != "done"]
    mode = " (demo)" if plan.demo else ""
    if dry_run:
        print(f"# {plan.name}{mode}: {len(todo)} of {len(jobs)} stage runs pending")
        for job in jobs:
            if job.status == "done":
                print(f"# done: {job.label} ({job.output})")
            else:
                missing = [p for p in job.inputs if not p.exists() and
                           not any(p == j.output for j in todo)]
                for path in missing:
                    print(f"# needs {path} (not produced by this selection)")
                if job.reason:
                    print(f"# {job.status}: {job.label}: {job.reason}")
                print(job.shell())
        return todo
    for job in todo:
        _check_ready(job, todo)
        _check_free(job)
    write_plan_record(plan, run_root)
    print(f"{plan.name}{mode}: {len(todo)} of {len(jobs)} stage runs to do under {run_root}",
          flush=True)
    step = 0
    for job in jobs:
        if job.status == "done":
            print(f"  skip {job.label}: done ({job.output})", flush=True)
            continue
        step += 1
        verb = "resume" if job.status == "resume" else "run"
        print(f"  [{step}/{len(todo)}] {verb} {job.label}: deepfakemae {job.args[0]} "
              f"(RUN_DIR={job.run_dir})", flush=True)
        if job.restart and job.stage_dir.exists():
            _set_aside(job)
        _check_free(job)
        start = time.time()
        _run_stage(job)
        state = stage_state_of(job.run_dir, job.stage)
        if state.status != "done":
            raise StageFailed(f"{job.label} ended without finishing ({state.reason}); see the "
                              f"log under {job.stage_dir}")
        print(f"  [{step}/{len(todo)}] {job.label} done in {time.time() - start:.0f} s", flush=True)
    return todo


def _check_free(job: Job) -> None:
    """:class:`PlanError` when another live trainer holds the stage's folder (its ``.lock``)."""
    holder = lock_holder(job.stage_dir)
    if holder is not None:
        raise PlanError(f"{job.label}: {job.stage_dir} is in use by another trainer "
                        f"({describe(holder)}); wait for it to end, or stop it, and run again")


def _check_ready(job: Job, todo: list[Job]) -> None:
    """Fail before any training when a config file or an input checkpoint cannot exist."""
    configs = [job.args[i + 1] for i, a in enumerate(job.args) if a == "-c"]
    for config in configs:
        if not Path(config).exists():
            raise PlanError(f"{job.label}: config {config} does not exist; run from the "
                            f"project root or fix the plan's `configs:`")
    produced = {j.output for j in todo}
    for (flag, producer), path in zip(STAGE_INPUTS[job.stage], job.inputs, strict=True):
        if path.exists():
            _check_input(job, flag, producer, path)
        elif path not in produced:
            raise PlanError(f"{job.label} needs {path}, which neither exists nor is produced by "
                            f"this selection; add its stage to --stages or run that table first")


def _check_input(job: Job, flag: str, producer: str, path: Path) -> None:
    """:class:`PlanError` when the existing input checkpoint ``path`` is not usable for ``flag``."""
    from deepfakemae.modules.checkpoints import (
        CHECKPOINT_ARGUMENTS,
        CheckpointError,
        check_checkpoint,
    )

    name = flag.rsplit(".", 1)[-1]
    try:
        check_checkpoint(path, CHECKPOINT_ARGUMENTS[name], purpose=f"{job.label} ({name})")
    except CheckpointError as exc:
        raise PlanError(f"{exc}; rerun the stage that writes it with `deepfakemae run "
                        f"{job.table} --stages {producer} --fresh`, or remove {path}") from exc
