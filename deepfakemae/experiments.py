"""Experiment plans: the paper's tables as sequences of LightningCLI stage runs.

A plan (``experiments/tables/tableN.yaml``, merged over ``experiments/tables/common.yaml``) names
variants; each variant runs the four stages ``pretrain → finetune → mapping → detector`` in its
own run directory ``<run root>/<table>/<variant>`` (the ``RUN_DIR`` the stage configs read), or
``reuse``s a stage of another variant (``"<variant>"`` or ``"<table>/<variant>"``): the stage is
not retrained and the consumers get that run's checkpoint on the command line.

A stage is done when its output exists — ``<RUN_DIR>/<stage>/checkpoints/last.ckpt`` for the fit
stages, ``<RUN_DIR>/detector/results_test.json`` for the detector's test run — and was not left
interrupted (``run_plan`` keeps a ``.running`` marker in the stage folder while it trains; an
interrupted fit stage resumes from its ``last.ckpt``). Reruns therefore only do what is missing.

``deepfakemae run experiments/tables/table4.yaml [--demo] [--dry-run] ...`` is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

#: the pipeline, in run order
STAGES: tuple[str, ...] = ("pretrain", "finetune", "mapping", "detector")
#: LightningCLI subcommand of each stage
STAGE_COMMAND = {"pretrain": "fit", "finetune": "fit", "mapping": "fit", "detector": "test"}
#: stage -> [(flag of the consumer, producing stage)]: the checkpoints a stage reads
STAGE_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "pretrain": (),
    "finetune": (("model.init_args.mae_checkpoint", "pretrain"),),
    "mapping": (("model.init_args.mae_checkpoint", "pretrain"),),
    "detector": (("model.init_args.finetune_checkpoint", "finetune"),
                 ("model.init_args.mapping_checkpoint", "mapping")),
}
#: environment variables the stage configs read, passed through to every stage
PASSED_ENV = ("CACHE_DIR", "DEMO_CACHE", "PRECISION")
RUNNING_MARKER = ".running"
PLAN_RECORD = "plan.json"

PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMON_PLAN = "common.yaml"


def experiments_dir() -> Path:
    """The stage configs and table plans: ``experiments/`` of a clone (or editable install),
    else the copy a wheel ships as the ``deepfakemae.configs`` package data."""
    clone = PROJECT_ROOT / "experiments"
    return clone if clone.is_dir() else Path(__file__).resolve().parent / "configs"


def locate(path: str | Path) -> Path:
    """``path`` as given when it exists from the working directory (or is absolute); a path
    under ``experiments/`` that does not is looked up in :func:`experiments_dir`."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not p.parts or p.parts[0] != "experiments":
        return p
    return experiments_dir().joinpath(*p.parts[1:])


TABLES_DIR = experiments_dir() / "tables"


class PlanError(ValueError):
    """A plan file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of a variant: its configs and flags, or the variant whose run it reuses."""

    stage: str
    configs: tuple[str, ...]
    args: dict = field(default_factory=dict)  # nested mapping -> dotted flags
    reuse: str | None = None  # "<variant>" or "<table>/<variant>"


@dataclass
class Plan:
    """A resolved plan: the variants of one table, their stages, and the report layout."""

    name: str
    title: str
    description: str
    path: Path
    demo: bool
    variants: dict[str, dict[str, StageSpec]]
    report: dict
    resolved: dict  # the whole resolved plan (written to <run root>/<table>/plan.json)


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

    @property
    def label(self) -> str:
        return f"{self.table}/{self.variant} {self.stage}"

    def env(self) -> dict[str, str]:
        """Variables to set for this run (``RUN_DIR``, the data roots in use, and the W&B run's
        name, group, job type and tags, read by :class:`deepfakemae.loggers.AutoWandbLogger`)."""
        env = {"RUN_DIR": str(self.run_dir)}
        env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
        env.update(self.wandb_env())
        return env

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


# ------------------------------------------------------------------------------------------ loading
def resolve_plan_path(path: str | Path) -> Path:
    """A plan file path, or a bare table name (``table4``) looked up in ``experiments/tables``."""
    p = locate(path)
    if p.exists():
        return p
    if re.fullmatch(r"table\d+", str(path)) and (TABLES_DIR / f"{path}.yaml").exists():
        return TABLES_DIR / f"{path}.yaml"
    raise PlanError(f"plan {path}: no such file; give a plan such as "
                    f"experiments/tables/table1.yaml or a table name (table1 .. table6)")


def load_plan(path: str | Path, demo: bool = False) -> Plan:
    """Load a plan merged over ``common.yaml`` (and, with ``demo``, both ``demo:`` sections).

    Interpolations (``${...}``, ``${oc.env:CACHE_DIR,...}``) resolve here, so the environment at
    load time fixes the data paths the commands get.
    """
    path = resolve_plan_path(path)
    try:
        own = OmegaConf.load(path)
        common_path = path.parent / COMMON_PLAN
        common = OmegaConf.load(common_path) if common_path.exists() else OmegaConf.create({})
    except Exception as err:  # yaml errors carry the line; name the file
        raise PlanError(f"{path}: cannot parse ({err})") from err
    if not isinstance(own, DictConfig) or "variants" not in own:
        raise PlanError(f"{path}: a plan is a mapping with `variants:`; see experiments/tables/table1.yaml")
    if "demo" not in own:
        raise PlanError(f"{path}: add a `demo:` section (how to run the plan on the demo set)")
    layers = [_without(common, "demo"), _without(own, "demo")]
    if demo:
        layers += [common.get("demo") or {}, own.get("demo") or {}]
    merged = OmegaConf.merge(*layers)
    try:
        resolved = OmegaConf.to_container(merged, resolve=True)
    except Exception as err:
        raise PlanError(f"{path}: cannot resolve its interpolations ({err})") from err
    return _plan_from_dict(resolved, path, demo)


def plan_from_record(record: dict) -> Plan:
    """The plan a ``plan.json`` written by `run_plan` describes."""
    return _plan_from_dict(record["plan"], Path(record["path"]), bool(record["demo"]))


def _without(cfg: DictConfig, key: str) -> DictConfig:
    cfg = cfg.copy()
    if key in cfg:
        del cfg[key]
    return cfg


def _plan_from_dict(resolved: dict, path: Path, demo: bool) -> Plan:
    name = str(resolved.get("name") or path.stem)
    configs = resolved.get("configs") or {}
    stage_args = resolved.get("stage_args") or {}
    variants: dict[str, dict[str, StageSpec]] = {}
    for vname, vspec in (resolved.get("variants") or {}).items():
        if not isinstance(vspec, dict) or set(vspec) != set(STAGES):
            raise PlanError(f"{path}: variant {vname!r} must list the stages {list(STAGES)} "
                            f"(each `{{}}`, `{{args: ...}}` or `{{reuse: <variant>}}`)")
        stages = {}
        for stage in STAGES:
            spec = vspec[stage] or {}
            unknown = set(spec) - {"args", "reuse"}
            if unknown:
                raise PlanError(f"{path}: {vname}.{stage} has unknown keys {sorted(unknown)}; "
                                f"use `args` and/or `reuse`")
            reuse = spec.get("reuse")
            if reuse is not None and spec.get("args"):
                raise PlanError(f"{path}: {vname}.{stage} reuses {reuse!r} and cannot also set args")
            if reuse is None and not configs.get(stage):
                raise PlanError(f"{path}: no `configs.{stage}` list (see experiments/tables/common.yaml)")
            args = merge_args(stage_args.get(stage) or {}, *_as_arg_list(spec.get("args"), path,
                                                                          f"{vname}.{stage}"))
            stages[stage] = StageSpec(stage, tuple(configs.get(stage) or ()), args, reuse)
        variants[str(vname)] = stages
    if not variants:
        raise PlanError(f"{path}: `variants:` is empty")
    report = resolved.get("report") or {}
    for block in report.get("blocks") or []:
        for row in block.get("rows") or []:
            for col in block.get("columns") or []:
                variant = row.get("variant") or col.get("variant")
                if variant not in variants:
                    raise PlanError(f"{path}: report cell ({row.get('label')}, {col.get('label')}) "
                                    f"names variant {variant!r}; variants are {list(variants)}")
                if not (row.get("test_set") or col.get("test_set")):
                    raise PlanError(f"{path}: report cell ({row.get('label')}, {col.get('label')}) "
                                    f"needs a test_set on its row or column")
    return Plan(name=name, title=str(resolved.get("title") or name),
                description=str(resolved.get("description") or ""), path=path, demo=demo,
                variants=variants, report=report, resolved=resolved)


def _as_arg_list(args, path: Path, where: str) -> list[dict]:
    if args is None:
        return []
    items = args if isinstance(args, list) else [args]
    for item in items:
        if not isinstance(item, dict):
            raise PlanError(f"{path}: {where}.args must be a mapping (or a list of mappings), "
                            f"got {item!r}")
    return items


def merge_args(*layers: dict) -> dict:
    """Deep merge of nested flag mappings; later layers win, lists are replaced whole."""
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge_args(out[key], value)
            else:
                out[key] = value
    return out


def flag_list(args: dict, prefix: str = "") -> list[str]:
    """Nested mapping → ``--a.b.c=value`` flags; lists and ``None`` become JSON values."""
    flags = []
    for key, value in args.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flags += flag_list(value, f"{name}.")
        else:
            flags.append(f"--{name}={_flag_value(value)}")
    return flags


def _flag_value(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


# ------------------------------------------------------------------------------------------ jobs
def _config_path(path: str) -> str:
    """A config path as it should appear in a command: as written when it exists from the
    working directory, else where :func:`locate` finds it."""
    p = locate(path)
    return path if p == Path(path) else str(p)


def stage_output(run_dir: Path, stage: str) -> Path:
    """The file whose presence marks ``stage`` done in ``run_dir``."""
    if STAGE_COMMAND[stage] == "fit":
        return run_dir / stage / "checkpoints" / "last.ckpt"
    return run_dir / stage / "results_test.json"


def stage_status(run_dir: Path, stage: str) -> str:
    """``done`` (output present), ``resume`` (an interrupted fit with a checkpoint) or ``pending``."""
    output = stage_output(run_dir, stage)
    interrupted = (run_dir / stage / RUNNING_MARKER).exists()
    if output.exists() and not interrupted:
        return "done"
    if output.exists() and STAGE_COMMAND[stage] == "fit":
        return "resume"
    return "pending"


class Resolver:
    """Follows ``reuse`` links across variants and tables (plans of other tables are loaded
    from the same folder, in the same mode)."""

    def __init__(self, plan: Plan, run_root: Path) -> None:
        self.plans = {plan.name: plan}
        self.root = plan.path.parent
        self.demo = plan.demo
        self.run_root = run_root

    def plan(self, table: str) -> Plan:
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
        status = stage_status(run_dir, stage)
        args = [STAGE_COMMAND[stage]]
        for config in spec.configs:
            args += ["-c", _config_path(config)]
        args += flag_list(spec.args) + [f"--{k}={v}" for k, v in extra.items()]
        if status == "resume":
            args.append(f"--ckpt_path={stage_output(run_dir, stage)}")
        return Job(table, variant, stage, run_dir, args, stage_output(run_dir, stage), status, inputs)


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
    seen: set[tuple[str, str, str]] = set()

    def visit(table: str, variant: str, stage: str) -> None:
        table, variant = resolver.owner(table, variant, stage)
        if (table, variant, stage) in seen:
            return
        seen.add((table, variant, stage))
        for _, producer in STAGE_INPUTS[stage]:
            visit(table, variant, producer)
        if stage not in stages:
            return
        job = resolver.job(table, variant, stage)
        if fresh and table == plan.name:
            job.status = "pending"
            job.args = [a for a in job.args if not a.startswith("--ckpt_path=")]
        order.append(job)

    for variant in variants:
        for stage in STAGES:
            visit(plan.name, variant, stage)
    return order


def pending_stages(plan: Plan, run_root: str | Path, variants: Sequence[str] | None = None,
                   stages: Sequence[str] | None = None, fresh: bool = False) -> list[Job]:
    """The stage runs `run_plan` would execute now, in order (``resume`` ones included)."""
    return [j for j in plan_jobs(plan, run_root, variants, stages, fresh) if j.status != "done"]


# ------------------------------------------------------------------------------------------ running
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
    if out.exists() and json.loads(out.read_text()).get("demo") != plan.demo:
        kinds = ("paper", "demo") if plan.demo else ("demo", "paper")
        raise PlanError(f"{out.parent} holds {kinds[0]} runs of {plan.name}; put the {kinds[1]} "
                        "runs under another --run-root so the two can never be mixed up")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"path": str(plan.path.resolve()), "demo": plan.demo, "plan": plan.resolved}
    out.write_text(json.dumps(record, indent=2))
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
        marker.write_text(json.dumps({"args": job.args, "started": time.time()}))
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


#: the module class whose checkpoint each input flag needs
INPUT_MODULES = {"mae_checkpoint": "MAEPretrainModule", "finetune_checkpoint": "FinetuneModule",
                 "mapping_checkpoint": "MappingModule"}


def _check_input(job: Job, flag: str, producer: str, path: Path) -> None:
    """:class:`PlanError` when the existing input checkpoint ``path`` is not usable for ``flag``."""
    from deepfakemae.modules.checkpoints import CheckpointError, check_checkpoint

    name = flag.rsplit(".", 1)[-1]
    try:
        check_checkpoint(path, INPUT_MODULES[name], purpose=f"{job.label} ({name})")
    except CheckpointError as exc:
        raise PlanError(f"{exc}; rerun the stage that writes it with `deepfakemae run "
                        f"{job.table} --stages {producer} --fresh`, or remove {path}") from exc


# ------------------------------------------------------------------------------------------ CLI
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``deepfakemae run``."""
    parser.add_argument("plan", help="plan file (experiments/tables/table4.yaml) or table name (table4)")
    parser.add_argument("--demo", action="store_true",
                        help="run the plan's demo version on the embedded demo set (tiny presets)")
    parser.add_argument("--run-root", type=Path, default=None,
                        help="run root; variants run in <run root>/<table>/<variant> "
                             "(default runs, or runs/demo with --demo)")
    parser.add_argument("--fresh", action="store_true",
                        help="rerun this table's stages even when their outputs exist")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the pending stage commands (one shell line each) and exit")
    parser.add_argument("--variants", help="comma-separated variants (default: all)")
    parser.add_argument("--stages", help=f"comma-separated stages of {','.join(STAGES)} (default: all)")


def run_plan_command(args: argparse.Namespace) -> int:
    """``deepfakemae run``: load the plan and run (or print) its pending stages."""
    try:
        plan = load_plan(args.plan, demo=args.demo)
        run_root = args.run_root or Path("runs/demo" if args.demo else "runs")
        run_plan(plan, run_root, fresh=args.fresh, stages=_comma_list(args.stages),
                 dry_run=args.dry_run, variants=_comma_list(args.variants))
    except PlanError as err:
        print(f"deepfakemae run: {err}", file=sys.stderr)
        return 2
    return 0


def _comma_list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None
