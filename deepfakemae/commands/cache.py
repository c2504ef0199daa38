"""``deepfakemae cache verify DIR [--repair]``: check a face cache (see ``faces/verify.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfakemae.errors import UsageError, reports_errors
from deepfakemae.faces.verify import verify_cache


def add_cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``cache`` subcommands to ``parser``."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check every entry (zip CRCs, array shapes, "
                                               "JPEGs) and print a summary")
    verify.add_argument("root", type=Path, help="face cache folder (the preprocess --output)")
    verify.add_argument("--repair", action="store_true",
                        help="remove damaged entries and stale temporary files, rebuild the "
                             "manifest; the next preprocess run rebuilds the removed entries")
    verify.add_argument("--no-decode", action="store_true",
                        help="skip decoding the JPEGs (CRCs and shapes only; faster)")
    return parser


@reports_errors("cache")
def run_cache_command(args: argparse.Namespace) -> int:
    """``cache verify``: 0 when the cache is sound (or was repaired), 1 when it needs repair,
    2 when the folder is not a face cache."""
    root = Path(args.root)
    if not (root / "entries").is_dir():
        raise UsageError(f"{root} is not a face cache (no entries/ folder); pass the folder "
                         "given to `deepfakemae preprocess --output`")
    report = verify_cache(root, repair=args.repair, decode=not args.no_decode)
    print(report.format(root))
    return 0 if report.clean else 1
