"""Running a plan: each pending stage as its own ``deepfakemae fit|test`` process, in order,
after checking that its configs and input checkpoints can exist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deepfakemae.faces.files import atomic_write
from deepfakemae.plans.jobs import RUNNING_MARKER, STAGE_INPUTS, Job, plan_jobs
from deepfakemae.plans.load import PLAN_RECORD, Plan, PlanError


def _run_stage(job: Job) -> None:
    """Run one stage as its own process (``python -m deepfakemae.cli <fit|test> ...``).

    A process per stage gives each stage a fresh DDP world on multi-GPU machines (Lightning's
    launcher re-executes exactly this command for the other ranks) and frees its memory after.
    """
    env = {**os.environ, **job.env()}
    result = subprocess.run([sys.executable, "-m", "deepfakemae.cli", *job.args], env=env,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{job.label} failed (exit code {result.returncode}); its log is "
                           f"above and under {job.run_dir / job.stage}")


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
    if out.exists() and json.loads(out.read_text(encoding="utf-8")).get("demo") != plan.demo:
        kinds = ("paper", "demo") if plan.demo else ("demo", "paper")
        raise PlanError(f"{out.parent} holds {kinds[0]} runs of {plan.name}; put the {kinds[1]} "
                        "runs under another --run-root so the two can never be mixed up")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"path": str(plan.path.resolve()), "demo": plan.demo, "plan": plan.resolved}
    data = json.dumps(record, indent=2).encode("utf-8")
    atomic_write(out, lambda h: h.write(data))  # parallel fold processes read it meanwhile
    return out


def run_plan(plan: Plan, run_root: str | Path, fresh: bool = False,
             stages: Sequence[str] | None = None, dry_run: bool = False,
             variants: Sequence[str] | None = None) -> list[Job]:
    """Run the plan's pending stages in order (in this process) and return the jobs run.

    Each stage runs with ``RUN_DIR=<run root>/<table>/<variant>``; ``CACHE_DIR`` / ``DEMO_CACHE``
    pass through. Done stages are skipped unless ``fresh``. ``dry_run`` prints the shell line of
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
                print(job.shell())
        return todo
    for job in todo:
        _check_ready(job, todo)
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
        if fresh and job.table == plan.name and job.output.exists():
            _set_aside(job)
        marker = job.run_dir / job.stage / RUNNING_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"args": job.args, "started": time.time()}), encoding="utf-8")
        start = time.time()
        _run_stage(job)
        if not job.output.exists():
            raise RuntimeError(f"{job.label} finished without writing {job.output}; see the log "
                               f"under {job.run_dir / job.stage}")
        marker.unlink()
        print(f"  [{step}/{len(todo)}] {job.label} done in {time.time() - start:.0f} s", flush=True)
    return todo


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
