"""Plan files: a paper table as variants × stages, merged over ``common.yaml`` and resolved.

A plan (``experiments/tables/tableN.yaml``) names variants; each variant lists the stages
(``pretrain``, one per detector branch: ``finetune``, ``mapping``; then ``detector``), each ``{}``, ``{args: ...}`` or
``{reuse: <variant>}`` (``"<variant>"`` or ``"<table>/<variant>"``: that run's stage is used).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deepfakemae.branches import BRANCHES
from deepfakemae.errors import DeepfakeMAEError

#: stage 1, one stage per detector branch (the registry's names), the fused detector's test
PRETRAIN, DETECTOR = "pretrain", "detector"
BRANCH_STAGES: tuple[str, ...] = tuple(BRANCHES)
#: the pipeline, in run order
STAGES: tuple[str, ...] = (PRETRAIN, *BRANCH_STAGES, DETECTOR)
PLAN_RECORD = "plan.json"
#: the key of a resolved plan that holds the command producing its runs, when a command built
#: the plan (``deepfakemae demo``); a table plan is rerun with ``deepfakemae run <table>``
RERUN_KEY = "rerun"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMMON_PLAN = "common.yaml"


def experiments_dir() -> Path:
    """The stage configs and table plans: ``experiments/`` of a clone (or editable install),
    else the copy a wheel ships as the ``deepfakemae.configs`` package data."""
    clone = PROJECT_ROOT / "experiments"
    return clone if clone.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def locate(path: str | Path) -> Path:
    """``path`` as given when it exists from the working directory (or is absolute); a path
    under ``experiments/`` that does not is looked up in :func:`experiments_dir`."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not p.parts or p.parts[0] != "experiments":
        return p
    return experiments_dir().joinpath(*p.parts[1:])


TABLES_DIR = experiments_dir() / "tables"


class PlanError(DeepfakeMAEError, ValueError):
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
    #: variables the stage configs read (``${oc.env:...}``), given by the command that built the
    #: plan (``deepfakemae demo``: ``DEMO_CACHE``); every stage process gets them
    env: dict[str, str] = field(default_factory=dict)


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


def config_value(configs: tuple[str, ...], *keys: str):
    """The value at ``keys`` in the last of a stage's config files that sets it (None if none
    does), read without resolving interpolations."""
    value = None
    for config in configs:
        node = OmegaConf.load(locate(config))
        for key in keys:
            node = node.get(key) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None:
            value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return value


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
