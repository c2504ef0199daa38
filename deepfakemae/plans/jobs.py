"""The job graph of a plan: one :class:`Job` per stage run, ``reuse`` links followed, done /
pending / resume status read from the run folders.

A stage's status is :func:`deepfakemae.runstate.stage_state` of its folder — the one rule the
runner, ``deepfakemae demo``, the ``--dry-run`` lines and hand-written job scripts share: a fit
stage is done only when its own run wrote ``done.json`` at the end of its whole schedule, a test
stage when its ``results_test.json`` is complete. Every fit line carries ``--ckpt_path=last``:
the same line starts the stage, and after an interruption (or a SLURM requeue) resumes it.

A done stage is *stale*, and runs again from scratch (its folder set aside under
``<RUN_DIR>/.previous/``), when the plan no longer gives what made it (:func:`stale_reason`):
a fit whose record carries another settings hash (:meth:`Job.settings_hash`; a record from
before hashes were kept: another ``max_steps`` / ``max_epochs``), or any stage whose input is
run again in this selection or was rewritten after the stage finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from deepfakemae.plans.load import (
    BRANCH_STAGES,
    DETECTOR,
    PRETRAIN,
    STAGES,
    Plan,
    PlanError,
    config_value,
    flag_list,
    load_plan,
    locate,
)
from deepfakemae.rundir import last_checkpoint, results_file
from deepfakemae.runstate import (
    SETTINGS_ENV,
    StageState,
    finished_at,
    read_done,
    resume_checkpoint,
    stage_state,
)

#: LightningCLI subcommand of each stage: the detector is only tested
STAGE_COMMAND = {stage: "test" if stage == DETECTOR else "fit" for stage in STAGES}
#: stage -> [(flag of the consumer, producing stage)]: the checkpoints a stage reads (every
#: branch trains from stage 1; the detector reads each branch's as ``<branch>_checkpoint``)
STAGE_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    PRETRAIN: (),
    **{b: (("model.init_args.mae_checkpoint", PRETRAIN),) for b in BRANCH_STAGES},
    DETECTOR: tuple((f"model.init_args.{b}_checkpoint", b) for b in BRANCH_STAGES),
}
#: environment variables the stage configs read, passed through to every stage
PASSED_ENV = ("CACHE_DIR", "DEMO_CACHE", "PRECISION")
#: a fit resumes its stage's newest resumable checkpoint, or starts when there is none
RESUME_FLAG = "--ckpt_path=last"


@dataclass
class Job:
    """One stage run: where, with which command, and whether it is pending."""

    table: str
    variant: str
    stage: str
    run_dir: Path
    args: list[str]  # LightningCLI argv: ["fit", "-c", ..., "--x=y", ...]
    output: Path
    status: str  # "done" | "pending" | "resume"
    inputs: list[Path]
    reason: str = ""  # why the status (e.g. the malformed results file)
    config_env: dict[str, str] = field(default_factory=dict)  # the plan's ``env``
    #: run from scratch, the old stage folder set aside first (``--fresh`` or a stale stage)
    restart: bool = False

    @property
    def stage_dir(self) -> Path:
        """``<RUN_DIR>/<stage>``: the stage's folder (its lock, record and outputs)."""
        return self.run_dir / self.stage

    def _command_digest(self):
        """SHA-256 over the stage's command without its resume switches."""
        digest = hashlib.sha256()
        for arg in self.args:
            if arg in (RESUME_FLAG, "--fresh") or arg.startswith("--ckpt_path="):
                continue
            digest.update(arg.encode("utf-8") + b"\0")
        return digest

    def _config_files(self) -> list[Path]:
        return [Path(self.args[i + 1]) for i, arg in enumerate(self.args[:-1])
                if arg == "-c" and Path(self.args[i + 1]).is_file()]

    def config_hash(self) -> str:
        """SHA-256 (16 hex digits) of the stage's command without its resume switches and of
        the text of every config file it reads: recorded in the stage's results."""
        digest = self._command_digest()
        for path in self._config_files():
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def planned(self, key: str):
        """The ``trainer.<key>`` the stage runs with: its last ``--trainer.<key>=`` flag, else
        the last of its config files that sets it (None if none does; unresolved)."""
        flag = f"--trainer.{key}="
        given = [a[len(flag):] for a in self.args if a.startswith(flag)]
        return given[-1] if given else config_value(tuple(map(str, self._config_files())),
                                                     "trainer", key)

    def settings_hash(self) -> str:
        """SHA-256 (16 hex digits) of what a fit's weights follow from: the stage's command
        without its resume switches, the *parsed* content of every config file it reads (a
        comment or a layout change does not count) and the plan's ``env``. A fit's
        ``done.json`` records it; a different one makes the done stage stale."""
        digest = self._command_digest()
        for path in self._config_files():
            content = OmegaConf.to_container(OmegaConf.load(path))  # interpolations unresolved
            digest.update(json.dumps(content, sort_keys=True, default=str).encode("utf-8"))
        digest.update(json.dumps(self.config_env, sort_keys=True).encode("utf-8"))
        return digest.hexdigest()[:16]

    @property
    def label(self) -> str:
        """``<table>/<variant> <stage>``, for messages."""
        return f"{self.table}/{self.variant} {self.stage}"

    def env(self) -> dict[str, str]:
        """Variables to set for this run (``RUN_DIR``, the data roots in use: the plan's own
        ``env`` over those passed through, and the W&B run's name, group, job type and tags,
        read by :class:`deepfakemae.loggers.AutoWandbLogger`)."""
        env = {"RUN_DIR": str(self.run_dir)}
        env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
        env.update(self.config_env)
        env.update(self.wandb_env())
        env.update(self.provenance_env())
        if self.args[0] == "fit":
            env[SETTINGS_ENV] = self.settings_hash()
        return env

    def start_over(self, reason: str) -> None:
        """Mark the job to run from scratch: pending, without resuming (a fit gets ``--fresh``),
        its old folder set aside by the runner first."""
        self.status, self.reason, self.restart = "pending", reason, True
        self.args = [a for a in self.args if not a.startswith("--ckpt_path=")]
        if self.args[0] == "fit" and "--fresh" not in self.args:
            self.args.append("--fresh")

    def provenance_env(self) -> dict[str, str]:
        """The plan, variant and config hash the stage's results carry
        (:data:`deepfakemae.lightning_cli.PROVENANCE_ENV`)."""
        return {"DEEPFAKEMAE_PLAN": self.table, "DEEPFAKEMAE_VARIANT": self.variant,
                "DEEPFAKEMAE_CONFIG_HASH": self.config_hash()}

    def wandb_env(self) -> dict[str, str]:
        """W&B's own variables for this stage: run ``<table>/<variant>/<stage>`` in group
        ``<table>/<variant>``, job type ``<stage>``, tagged with all three."""
        return {"WANDB_NAME": f"{self.table}/{self.variant}/{self.stage}",
                "WANDB_RUN_GROUP": f"{self.table}/{self.variant}",
                "WANDB_JOB_TYPE": self.stage,
                "WANDB_TAGS": ",".join((self.table, self.variant, self.stage))}

    def shell(self) -> str:
        """The run as one shell line: ``RUN_DIR=... deepfakemae fit -c ... --...``."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        return f"{env} deepfakemae {' '.join(shlex.quote(a) for a in self.args)}"


def _config_path(path: str) -> str:
    """A config path as it should appear in a command: as written when it exists from the
    working directory, else where :func:`locate` finds it."""
    p = locate(path)
    return path if p == Path(path) else str(p)


def stage_output(run_dir: Path, stage: str) -> Path:
    """The file a finished ``stage`` of ``run_dir`` leaves for its consumers: the final
    ``last.ckpt`` of a fit stage, ``results_test.json`` of the detector."""
    if STAGE_COMMAND[stage] == "fit":
        return last_checkpoint(run_dir / stage)
    return results_file(run_dir / stage)


def stage_state_of(run_dir: Path, stage: str) -> StageState:
    """:func:`deepfakemae.runstate.stage_state` of ``<run_dir>/<stage>``."""
    return stage_state(run_dir / stage, STAGE_COMMAND[stage])


def stage_status(run_dir: Path, stage: str) -> str:
    """``done``, ``resume`` (an interrupted fit with a checkpoint) or ``pending``."""
    return stage_state_of(run_dir, stage).status


class Resolver:
    """Follows ``reuse`` links across variants and tables (plans of other tables are loaded
    from the same folder, in the same mode)."""

    def __init__(self, plan: Plan, run_root: Path) -> None:
        self.plans = {plan.name: plan}
        self.root = plan.path.parent
        self.demo = plan.demo
        self.run_root = run_root

    def plan(self, table: str) -> Plan:
        """The plan of ``table`` (loaded once, from the same folder and mode)."""
        if table not in self.plans:
            path = self.root / f"{table}.yaml"
            if not path.exists():
                raise PlanError(f"reuse of {table!r}: no plan {path}")
            self.plans[table] = load_plan(path, demo=self.demo)
        return self.plans[table]

    def owner(self, table: str, variant: str, stage: str, seen: tuple = ()) -> tuple[str, str]:
        """The (table, variant) whose run directory holds ``stage`` of ``table/variant``."""
        if (table, variant) in seen:
            chain = " -> ".join(f"{t}/{v}" for t, v in (*seen, (table, variant)))
            raise PlanError(f"reuse cycle for stage {stage}: {chain}")
        plan = self.plan(table)
        if variant not in plan.variants:
            raise PlanError(f"{plan.path}: reuse names variant {variant!r} of {table}; "
                            f"it has {list(plan.variants)}")
        reuse = plan.variants[variant][stage].reuse
        if reuse is None:
            return table, variant
        ref_table, _, ref_variant = reuse.rpartition("/")
        return self.owner(ref_table or table, ref_variant, stage, (*seen, (table, variant)))

    def run_dir(self, table: str, variant: str) -> Path:
        """``<run root>/<table>/<variant>``."""
        return self.run_root / table / variant

    def job(self, table: str, variant: str, stage: str) -> Job:
        """The job of an own (non-reused) stage."""
        spec = self.plan(table).variants[variant][stage]
        run_dir = self.run_dir(table, variant)
        extra: dict[str, str] = {}
        inputs = []
        for flag, producer in STAGE_INPUTS[stage]:
            owner = self.owner(table, variant, producer)
            path = stage_output(self.run_dir(*owner), producer)
            inputs.append(path)
            if owner != (table, variant):  # own inputs come from the configs' ${RUN_DIR} paths
                extra[flag] = str(path)
        state = stage_state_of(run_dir, stage)
        args = [STAGE_COMMAND[stage]]
        for config in spec.configs:
            args += ["-c", _config_path(config)]
        args += flag_list(spec.args) + [f"--{k}={v}" for k, v in extra.items()]
        if STAGE_COMMAND[stage] == "fit":
            args.append(RESUME_FLAG)
        return Job(table, variant, stage, run_dir, args, stage_output(run_dir, stage),
                   state.status, inputs, state.reason, dict(self.plan(table).env))


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):  # unset, or an interpolation only the stage resolves
        return None


def stale_reason(job: Job, input_jobs: Sequence[Job | None]) -> str:
    """Why the done (or resumable) ``job`` no longer stands for what the plan gives ('' when
    it does).

    ``input_jobs``: the jobs producing ``job.inputs``, in order (None where the producer is
    not in the selection: then the input file's time is compared with the stage's own). A
    resumable fit is only checked against its inputs (its settings are recorded at the end).
    """
    if job.status == "pending":
        return ""
    if job.status == "done" and STAGE_COMMAND[job.stage] == "fit":
        record = read_done(job.stage_dir)
        made = record.get("settings_hash")
        if made:
            now = job.settings_hash()
            if made != now:
                return (f"it finished with other settings (settings hash {made}; the plan now "
                        f"gives {now})")
        else:  # a record from before settings hashes were kept
            for key in ("max_steps", "max_epochs"):
                done = _as_int(record.get(key))
                want = _as_int(job.planned(key)) if done is not None else None
                if done is not None and want is not None and done != want:
                    return f"it finished a {key}={done} schedule; the plan now gives {want}"
    if job.status == "done":
        finished = finished_at(job.stage_dir, STAGE_COMMAND[job.stage])
    else:
        partial = resume_checkpoint(job.stage_dir)
        finished = partial.stat().st_mtime if partial is not None else None
    for path, producer in zip(job.inputs, input_jobs, strict=True):
        if producer is not None and producer.status != "done":
            return f"its input {producer.label} runs again first"
        try:
            written = path.stat().st_mtime
        except OSError:
            continue
        if finished is not None and written > finished:
            return f"its input {path} was rewritten after it finished"
    return ""


def plan_jobs(plan: Plan, run_root: str | Path, variants: Sequence[str] | None = None,
              stages: Sequence[str] | None = None, fresh: bool = False) -> list[Job]:
    """Every stage run the selection involves, dependencies first, with its status.

    ``variants`` / ``stages`` restrict the selection (default: all). Reused stages of other
    variants or tables are included (as dependencies) when their stage kind is selected.
    ``fresh`` marks this table's selected stages pending even when done; reused work of other
    tables keeps its status.
    """
    variants = list(variants or plan.variants)
    stages = list(stages or STAGES)
    for v in variants:
        if v not in plan.variants:
            raise PlanError(f"{plan.path}: no variant {v!r}; variants are {list(plan.variants)}")
    for s in stages:
        if s not in STAGES:
            raise PlanError(f"unknown stage {s!r}; stages are {list(STAGES)}")
    resolver = Resolver(plan, Path(run_root))
    order: list[Job] = []
    seen: dict[tuple[str, str, str], Job | None] = {}

    def visit(table: str, variant: str, stage: str) -> Job | None:
        table, variant = resolver.owner(table, variant, stage)
        if (table, variant, stage) in seen:
            return seen[table, variant, stage]
        seen[table, variant, stage] = None
        producers = [visit(table, variant, producer) for _, producer in STAGE_INPUTS[stage]]
        if stage not in stages:
            return None
        job = resolver.job(table, variant, stage)
        if fresh and table == plan.name:
            job.start_over("--fresh")
        elif why := stale_reason(job, producers):
            job.start_over(f"stale: {why}; it runs again (the old run is set aside under "
                           f"{job.run_dir / '.previous'})")
        seen[table, variant, stage] = job
        order.append(job)
        return job

    for variant in variants:
        for stage in STAGES:
            visit(plan.name, variant, stage)
    return order
