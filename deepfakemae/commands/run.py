"""``deepfakemae run``: run (or print) a paper-table plan's pending stages, resumably."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfakemae.errors import reports_errors
from deepfakemae.plans import STAGES, load_plan, run_plan


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


@reports_errors("run")
def run_plan_command(args: argparse.Namespace) -> int:
    """``deepfakemae run``: load the plan and run (or print) its pending stages."""
    plan = load_plan(args.plan, demo=args.demo)
    run_root = args.run_root or Path("runs/demo" if args.demo else "runs")
    run_plan(plan, run_root, fresh=args.fresh, stages=_comma_list(args.stages),
             dry_run=args.dry_run, variants=_comma_list(args.variants))
    return 0


def _comma_list(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None
