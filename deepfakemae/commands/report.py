"""``deepfakemae report``: tables of ``results_test.json`` beside the paper's numbers
(Markdown printed, Markdown + CSV written; see :mod:`deepfakemae.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfakemae.errors import reports_errors
from deepfakemae.report import render_markdown, report_tables


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``deepfakemae report``."""
    parser.add_argument("run_dirs", nargs="+", type=Path,
                        help="run root (runs), table run directories (runs/table1) or variant "
                             "directories (runs/table4/ratio_25)")
    parser.add_argument("--table", help="only this table (1..6 or table1..table6)")
    parser.add_argument("--output", type=Path,
                        help="folder for <table>.md and <table>.csv (default <run root>/report)")
    parser.add_argument("--demo", action="store_true",
                        help="runs of `deepfakemae run --demo` without their plan.json")


@reports_errors("report")
def run_report_command(args: argparse.Namespace) -> int:
    """``deepfakemae report``: print each table's Markdown and write Markdown + CSV files.
    Exit code 1 when a results file was malformed or refused (each named on stderr, its cells
    left empty), else 0."""
    table = args.table
    if table is not None and not table.startswith("table"):
        table = f"table{table}"
    reports = report_tables(args.run_dirs, table, args.output, args.demo)
    for report in reports:
        print(render_markdown(report))
    return 1 if any(report.problems for report in reports) else 0
