"""The paper's tables from finished runs, beside the paper's numbers (``deepfakemae report``,
:mod:`deepfakemae.commands.report`).

A table plan (``experiments/tables/tableN.yaml``) says which variant, test set and metric fills
each cell (``report.blocks``); the runs of ``deepfakemae run`` hold ``results_test.json`` in
``<run root>/<table>/<variant>/detector/`` (or in the run a variant reuses). The paper's numbers
come from ``experiments/paper_results.yaml``. Every table is written as Markdown and CSV; the
Markdown is also printed.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deepfakemae.branches import BRANCHES, FUSED, ordered_labels
from deepfakemae.faces.files import atomic_path, atomic_write_text
from deepfakemae.plans import (
    PLAN_RECORD,
    RERUN_KEY,
    TABLES_DIR,
    Plan,
    PlanError,
    Resolver,
    experiments_dir,
    load_plan,
    plan_from_record,
)
from deepfakemae.results import Results, ResultsError, read_results
from deepfakemae.rundir import results_file

PAPER_RESULTS = experiments_dir() / "paper_results.yaml"
DEFAULT_METRIC = f"{FUSED}/auc"
MISSING = "—"  # no run / no result
NOT_REPORTED = "*"  # the paper's own mark for a number it does not give
_TABLE_DIR = re.compile(r"table\d+")


@dataclass
class Row:
    """One row of a block: its label and one value per column (None = missing)."""

    label: str
    values: list[float | None]
    kind: str  # "baseline" (paper only) | "paper" | "ours" | "diff"
    group: str  # the row label of the table cell (e.g. "DeepfakeMAE" for its three rows)
    sources: list[str] = field(default_factory=list)  # result file per column ("" if none)


@dataclass(frozen=True)
class CellSpec:
    """A row or a column of a report block as a plan's ``report:`` writes it: its label and what
    it fixes of the cells it crosses (variant, test set, metric); a row may also name its row
    in the paper's table (``paper_row``, default its label) or have no published counterpart
    (``ours_only``)."""

    label: str
    variant: str | None = None
    test_set: str | None = None
    metric: str | None = None
    paper_row: str | None = None
    ours_only: bool = False

    @classmethod
    def parse(cls, spec: dict) -> CellSpec:
        """From a plan's mapping (``label`` required; other keys optional)."""
        def text(key: str) -> str | None:
            return None if spec.get(key) is None else str(spec[key])
        return cls(str(spec["label"]), text("variant"), text("test_set"), text("metric"),
                   text("paper_row"), bool(spec.get("ours_only")))


@dataclass(frozen=True)
class BlockSpec:
    """One block of a report layout: its rows and columns, an ``Avg`` column or not, the block
    of the paper's table it stands beside and the published methods shown with it."""

    rows: tuple[CellSpec, ...]
    columns: tuple[CellSpec, ...]
    average: bool = False
    paper_block: str | None = None
    references: tuple[str, ...] = ()
    title: str = ""

    @classmethod
    def parse(cls, spec: dict) -> BlockSpec:
        """From a plan's ``report.blocks`` entry."""
        paper_block = None if spec.get("paper_block") is None else str(spec["paper_block"])
        return cls(tuple(CellSpec.parse(r) for r in spec["rows"]),
                   tuple(CellSpec.parse(c) for c in spec["columns"]), bool(spec.get("average")),
                   paper_block, tuple(str(r) for r in spec.get("references") or []),
                   str(spec.get("title") or paper_block or ""))


@dataclass(frozen=True)
class Layout:
    """A table's report layout: its blocks, the header of the row column and the paper's table
    (``paper_results.yaml``) its numbers stand beside (default: the plan's name)."""

    blocks: tuple[BlockSpec, ...]
    row_header: str = "Method"
    paper: str | None = None

    @classmethod
    def parse(cls, spec: dict) -> Layout:
        """From a plan's ``report:`` mapping."""
        return cls(tuple(BlockSpec.parse(b) for b in spec.get("blocks") or []),
                   str(spec.get("row_header") or "Method"),
                   None if spec.get("paper") is None else str(spec["paper"]))


@dataclass(frozen=True)
class Cell:
    """Where one of our values comes from: its row and column labels and what they fix."""

    row: str
    column: str
    variant: str | None
    test_set: str | None
    metric: str


@dataclass
class Block:
    """A block of a table (Table 2 has one per training method)."""

    title: str
    columns: list[str]
    rows: list[Row]
    cells: list[Cell]  # one per our value


@dataclass
class TableReport:
    """A whole table, ready to render."""

    name: str
    title: str
    demo: bool
    row_header: str
    run_dir: Path
    blocks: list[Block]
    notes: list[str]
    problems: list[str] = field(default_factory=list)  # results files not used, with the fix


# ------------------------------------------------------------------------------------------ inputs
def load_paper_results(path: str | Path = PAPER_RESULTS) -> dict:
    """``experiments/paper_results.yaml`` as a dict."""
    path = Path(path)
    if not path.exists():
        raise PlanError(f"{path}: the paper's numbers are missing (run from a source checkout)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _paper_block(paper: dict, table: str, name: str | None) -> dict | None:
    blocks = (paper.get(table) or {}).get("blocks") or []
    for block in blocks:
        if name is None or block.get("name") == name:
            return block
    return None


class _Results:
    """Reads (and caches) ``results_test.json`` files, checked (:func:`read_results`) and
    matched to the run they should hold (their provenance); ``problems`` lists each file that
    was not used and why, with the fix."""

    def __init__(self, plan: Plan, resolver: Resolver) -> None:
        self.plan, self.resolver = plan, resolver
        self._files: dict[Path, Results | None] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    def load(self, path: Path, owner: tuple[str, str]) -> Results | None:
        """The results of ``owner`` (table, variant) in ``path``, None when there are none or
        they cannot be used (then a problem names the file)."""
        if path in self._files:
            return self._files[path]
        found = None
        if path.exists():
            fix = f"rerun it with `{rerun_command(self.plan)}`"
            try:
                found = read_results(path, fix=f"it is not counted; {fix}")
            except ResultsError as exc:
                self.problems.append(str(exc))
            else:
                found = self._check_provenance(path, found, owner, fix)
        self._files[path] = found
        return found

    def _check_provenance(self, path: Path, found: Results, owner: tuple[str, str],
                          fix: str) -> Results | None:
        made = found.provenance
        if not made.get("plan") and not made.get("variant"):
            self.notes.append(f"{path} records no plan or variant (written before results "
                              "carried their provenance, or by a hand-run test)")
            return found
        if (made.get("plan"), made.get("variant")) != owner:
            self.problems.append(
                f"{path} holds results of {made.get('plan')}/{made.get('variant')}, not of "
                f"{owner[0]}/{owner[1]} (copied from another run folder?); refused: {fix}")
            return None
        try:
            expected = self.resolver.job(*owner, "detector").config_hash()
        except PlanError:
            expected = None
        if expected and made.get("config_hash") and made["config_hash"] != expected:
            self.notes.append(f"{path} was made with another configuration (hash "
                              f"{made['config_hash']}; the plan now gives {expected}): "
                              f"{fix} for results of the current one")
        return found

    def get(self, path: Path, owner: tuple[str, str], test_set: str, metric: str
            ) -> float | None:
        """``metric`` of ``test_set`` in results file ``path`` (read once), None if absent."""
        found = self.load(path, owner)
        value = (found.sets if found else {}).get(test_set, {}).get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return 100.0 * float(value)


def _paper_values(block: dict | None, row: str, columns: list[str]) -> list[float | None]:
    """The paper's numbers of ``row`` in ``columns`` (None where it has none)."""
    block = block or {}
    pcols = [str(c) for c in block.get("columns") or []]
    values = {str(k): v for k, v in (block.get("rows") or {}).items()}.get(row)
    return [values[pcols.index(c)] if values and c in pcols else None for c in columns]


def _reference_row(paper: dict, name: str, columns: list[str]) -> Row:
    """A published figure of another method (``references.<name>`` of paper_results.yaml),
    matched to ``columns`` by label; ``Avg`` only when every other column has a value."""
    ref = (paper.get("references") or {}).get(name)
    if ref is None:
        raise PlanError(f"report references {name!r}, which experiments/paper_results.yaml "
                        f"does not list under `references:`")
    values = [ref["values"].get(c) for c in columns]
    if columns and columns[-1] == "Avg" and values[-1] is None:
        values[-1] = _round(_mean(values[:-1]))
    return Row(str(ref["label"]), values, "baseline", str(ref["label"]))


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value + 0.0, 1)


# ------------------------------------------------------------------------------------------ building
def build_table(plan: Plan, run_root: str | Path, variants: Sequence[str] | None = None,
                paper: dict | None = None) -> TableReport:
    """Fill the plan's report layout from the runs under ``run_root`` (``<run root>/<table>``).

    ``variants`` restricts our numbers to those variants (others show as missing).
    """
    run_root = Path(run_root)
    paper = load_paper_results() if paper is None else paper
    resolver = Resolver(plan, run_root)
    results = _Results(plan, resolver)
    layout = (Layout.parse(plan.report) if (plan.report or {}).get("blocks")
              else default_layout(plan, run_root, results))
    blocks = []
    for bspec in layout.blocks:
        columns = [c.label for c in bspec.columns]
        average = bspec.average
        pblock = _paper_block(paper, layout.paper or plan.name, bspec.paper_block)
        prows = {str(k): v for k, v in ((pblock or {}).get("rows") or {}).items()}
        shown = columns + (["Avg"] if average else [])
        rows: list[Row] = []
        used = {r.paper_row or r.label for r in bspec.rows}
        if not plan.demo:
            rows += [Row(lab, _paper_values(pblock, lab, shown), "baseline", lab)
                     for lab in prows if lab not in used]
            rows += [_reference_row(paper, name, shown) for name in bspec.references]
        cells = []
        for rspec in bspec.rows:
            label = rspec.label
            ours, sources = [], []
            for cspec in bspec.columns:
                variant = rspec.variant or cspec.variant
                test_set = rspec.test_set or cspec.test_set
                metric = cspec.metric or rspec.metric or DEFAULT_METRIC
                value, source = None, ""
                if variants is None or variant in variants:
                    owner = resolver.owner(plan.name, variant, "detector")
                    path = results_file(resolver.run_dir(*owner) / "detector")
                    value = results.get(path, owner, test_set, metric)
                    source = str(path) if value is not None else ""
                ours.append(value)
                sources.append(source)
                cells.append(Cell(label, cspec.label, variant, test_set, metric))
            if average:
                ours.append(_mean(ours))
                sources.append("")
            ours = [_round(v) for v in ours]
            if plan.demo or rspec.ours_only:  # no published counterpart
                rows.append(Row(f"{label} (ours)", ours, "ours", label, sources))
                continue
            published = _paper_values(pblock, rspec.paper_row or label, shown)
            diff = [None if o is None or p is None else round(o - p, 1)
                    for o, p in zip(ours, published, strict=True)]
            rows += [Row(f"{label} (paper)", published, "paper", label),
                     Row(f"{label} (ours)", ours, "ours", label, sources),
                     Row(f"Δ {label} (ours − paper)", diff, "diff", label)]
        blocks.append(Block(bspec.title if len(layout.blocks) > 1 else "", shown, rows, cells))
    notes = _notes(plan, run_root) + [f"Not used: {p}" for p in results.problems] + results.notes
    return TableReport(plan.name, plan.title, plan.demo, layout.row_header,
                       run_root / plan.name, blocks, notes, results.problems)


def rerun_command(plan: Plan) -> str:
    """The command that produces a plan's runs: the one recorded in the plan (``rerun``, set by
    ``deepfakemae demo``), else ``deepfakemae run <table> [--demo]``; a demo record from before
    that field gets the options its folder name stands for (:func:`_old_demo_command`)."""
    recorded = plan.resolved.get(RERUN_KEY)
    if recorded:
        return str(recorded)
    if plan.name == "demo" or plan.name.startswith("demo-"):
        return _old_demo_command(plan)
    return f"deepfakemae run {plan.name}{' --demo' if plan.demo else ''}"


def _old_demo_command(plan: Plan) -> str:
    """``deepfakemae demo`` with the options a demo run folder's name stands for, for a
    ``plan.json`` written before the command was recorded: ``demo-cv`` / ``demo-sensitivity``
    (``--folds k``, k its fold variants), ``-s<k+k>``, ``-t<k+k>``, ``-<source>[-<m1+m2>]``,
    ``-seed<N>``, ``-x<N>``."""
    parts, rest = ["deepfakemae demo"], plan.name
    for base, extra in (("demo-sensitivity", ["--sensitivity"]), ("demo-cv", []), ("demo", [])):
        if rest == base or rest.startswith(base + "-"):
            rest = rest[len(base):].lstrip("-")
            if base != "demo":
                parts += [f"--folds {len(plan.variants)}", *extra]
            break
    tokens = [t for t in rest.split("-") if t]
    if tokens and re.fullmatch(r"x\d+", tokens[-1]):
        scale = tokens.pop()
    else:
        scale = None
    seed = tokens.pop() if tokens and re.fullmatch(r"seed[\d+]+", tokens[-1]) else None
    if tokens and re.fullmatch(r"s[\d+]+", tokens[0]):
        parts.append("--strengths " + " ".join(tokens.pop(0)[1:].split("+")))
    if tokens and re.fullmatch(r"t[\d+]+", tokens[0]):
        parts.append("--train-strengths " + " ".join(tokens.pop(0)[1:].split("+")))
    if tokens:
        parts.append(f"--fake-source {tokens.pop(0)}")
    if tokens:
        parts.append(f"--pseudo-methods {tokens.pop(0).replace('+', ',')}")
    if seed:
        parts.append("--seed " + " ".join(seed[4:].split("+")))
    if scale:
        parts.append(f"--step-scale {scale[1:]}")
    return " ".join(parts)


def default_layout(plan: Plan, run_root: Path, reader: _Results | None = None) -> Layout:
    """A report layout for a plan that has none (the demo's): a row per variant and test set
    found in its detector results, columns for the fused detector and both branches."""
    resolver = Resolver(plan, run_root)
    reader = reader or _Results(plan, resolver)
    rows = []
    found = {FUSED, *(kind.label for kind in BRANCHES.values())}
    for variant in plan.variants:
        owner = resolver.owner(plan.name, variant, "detector")
        loaded = reader.load(results_file(resolver.run_dir(*owner) / "detector"), owner)
        results = loaded.sets if loaded else {}
        sets = sorted(results)
        found |= {k.rsplit("/", 1)[0] for m in results.values() for k in m if k.endswith("/auc")}
        label = "" if len(plan.variants) == 1 else f"{variant} "
        rows += [CellSpec(f"{label}{name}", variant, name) for name in sets]
    columns = tuple(CellSpec(label, metric=f"{label}/auc") for label in ordered_labels(found))
    return Layout((BlockSpec(tuple(rows), columns),), row_header="test set")


def _notes(plan: Plan, run_root: Path) -> list[str]:
    notes = [
        "AUC (%) at video level: a video's score is the mean of its frames' fake probabilities "
        f"(`{DEFAULT_METRIC}` of results_test.json, the fused detector, unless the column names a "
        "branch: " + ", ".join(f"`{k.label}/auc` {k.title}" for k in BRANCHES.values())
        + "); one decimal.",
        f"{MISSING} = no result yet (run `{rerun_command(plan)}`); "
        f"{NOT_REPORTED} = not reported in the paper.",
        f"Runs: {run_root / plan.name}.",
    ]
    if plan.demo:
        methods = plan.resolved.get("methods") or {}
        note = ("Demo run (tiny presets on the synthetic demo set): not comparable with the "
                "paper, so the paper's numbers are not shown.")
        if any(v in methods for v in plan.variants):  # variants named by method slot
            note += " Method slots: " + ", ".join(f"{k} = {v}" for k, v in methods.items()) + "."
        notes.insert(0, note)
    return notes


# ------------------------------------------------------------------------------------------ rendering
def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return NOT_REPORTED if kind in ("baseline", "paper") else MISSING
    return f"{value:+.1f}" if kind == "diff" else f"{value:.1f}"


def render_markdown(report: TableReport) -> str:
    """The table as Markdown: a header, one pipe table per block, then the notes."""
    prefix = "Demo: " if report.demo and not report.title.startswith("Demo") else ""
    lines = [f"## {prefix}{report.title}", ""]
    for block in report.blocks:
        if block.title:
            lines += [f"**{block.title}**", ""]
        lines.append("| " + " | ".join([report.row_header, *block.columns]) + " |")
        lines.append("|" + "---|" + "---:|" * len(block.columns))
        for row in block.rows:
            label = f"**{row.label}**" if row.kind == "ours" else row.label
            lines.append("| " + " | ".join([label, *(_fmt(v, row.kind) for v in row.values)]) + " |")
        lines.append("")
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("table", "block", "row", "column", "ours", "paper", "diff", "result_file")


def _cell_text(rows: dict[str, Row], kind: str, i: int) -> str:
    row = rows.get(kind) or (rows.get("baseline") if kind == "paper" else None)
    value = row.values[i] if row else None
    return "" if value is None else f"{value:.1f}"


def csv_rows(report: TableReport) -> list[dict]:
    """One CSV record per (row, column): ours, the paper's and the difference side by side."""
    out = []
    for block in report.blocks:
        groups: dict[str, dict[str, Row]] = {}
        for row in block.rows:  # dicts keep insertion order: the table's row order
            groups.setdefault(row.group, {})[row.kind] = row
        for group, rows in groups.items():
            ours = rows.get("ours")
            for i, column in enumerate(block.columns):
                out.append({"table": report.name, "block": block.title, "row": group,
                            "column": column, "ours": _cell_text(rows, "ours", i),
                            "paper": _cell_text(rows, "paper", i),
                            "diff": _cell_text(rows, "diff", i),
                            "result_file": ours.sources[i] if ours else ""})
    return out


def write_report(report: TableReport, output: str | Path) -> tuple[Path, Path]:
    """Write ``<output>/<table>.md`` and ``<output>/<table>.csv``; returns both paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    md, csv_path = output / f"{report.name}.md", output / f"{report.name}.csv"
    atomic_write_text(md, render_markdown(report))
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(report))
    return md, csv_path


# ------------------------------------------------------------------------------------------ discovery
@dataclass
class TableRuns:
    """Where one table's runs are, and which of its variants were asked for (None: all)."""

    table: str
    table_dir: Path
    variants: set[str] | None

    @property
    def run_root(self) -> Path:
        """The run root the table's folder sits in."""
        return self.table_dir.parent


def find_table_runs(paths: Sequence[str | Path], table: str | None = None) -> list[TableRuns]:
    """Sort run directories into tables: a run root (holding ``tableN/``), a table's run
    directory ``<root>/tableN``, or variant directories ``<root>/tableN/<variant>``.
    ``table`` keeps only that table (and names the table of a directory with another name)."""
    found: dict[Path, TableRuns] = {}

    def add(table_dir: Path, name: str, variant: str | None) -> None:
        entry = found.setdefault(table_dir.resolve(), TableRuns(name, table_dir, set()))
        if entry.variants is not None:
            if variant is None:
                entry.variants = None
            else:
                entry.variants.add(variant)

    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise PlanError(f"{path} is not a directory; give a run root, a table's "
                            f"run directory (runs/table1) or variant directories (runs/table4/ratio_25)")
        if (path / PLAN_RECORD).exists() or _TABLE_DIR.fullmatch(path.name):
            add(path, path.name if _TABLE_DIR.fullmatch(path.name) else (table or path.name), None)
        elif (path.parent / PLAN_RECORD).exists() or _TABLE_DIR.fullmatch(path.parent.name):
            add(path.parent, path.parent.name, path.name)
        elif any(_TABLE_DIR.fullmatch(p.name) for p in path.iterdir() if p.is_dir()):
            for sub in sorted(p for p in path.iterdir() if p.is_dir() and _TABLE_DIR.fullmatch(p.name)):
                add(sub, sub.name, None)
        elif table is not None:
            add(path, table, None)
        else:
            raise PlanError(f"cannot tell which table {path} holds; pass --table N")
    runs = list(found.values())
    if table is not None:
        runs = [r for r in runs if r.table == table]
        if not runs:
            raise PlanError(f"none of {list(map(str, paths))} holds runs of {table}")
    return sorted(runs, key=lambda r: (r.table, str(r.table_dir)))


def plan_for(runs: TableRuns, demo: bool = False) -> Plan:
    """The plan of a table's runs: the ``plan.json`` `run_plan` wrote, else the plan file."""
    record = runs.table_dir / PLAN_RECORD
    if record.exists():
        try:
            return plan_from_record(json.loads(record.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"{record} is unreadable ({exc!r}); rerun the table with "
                            "`deepfakemae run` (it writes the record again) or remove it") from None
    path = TABLES_DIR / f"{runs.table}.yaml"
    if not path.exists():
        raise PlanError(f"no {record} and no plan {path}; run the table with "
                        f"`deepfakemae run` first")
    return load_plan(path, demo=demo)


def report_tables(paths: Sequence[str | Path], table: str | None = None,
                  output: str | Path | None = None, demo: bool = False) -> list[TableReport]:
    """Build, write and return the reports of every table found under ``paths``."""
    reports = []
    for runs in find_table_runs(paths, table):
        plan = plan_for(runs, demo)
        report = build_table(plan, runs.run_root, runs.variants)
        write_report(report, output or runs.run_root / "report")
        for problem in report.problems:
            print(f"deepfakemae report: {problem}", file=sys.stderr)
        reports.append(report)
    return reports
