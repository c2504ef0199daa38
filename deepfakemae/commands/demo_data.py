"""``deepfakemae demo-data --output DIR``: build the embedded FF++-layout demo dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from deepfakemae.errors import reports_errors
from deepfakemae.synth.demo_data import ALL_METHODS, build_demo_dataset
from deepfakemae.synth.methods import DEMO_STRENGTHS


def add_demo_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``deepfakemae demo-data`` options to ``parser``."""
    parser.add_argument("--output", type=Path, required=True,
                        help="folder to write the FF++-layout demo dataset into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fake parameters")
    parser.add_argument("--frames", type=int, default=None,
                        help="keep only the first N frames of every clip (default: all 75)")
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS,
                        metavar="METHOD", help=f"fake methods to build (default: all of "
                                               f"{', '.join(ALL_METHODS)})")
    parser.add_argument("--strengths", nargs="+", type=int, default=[0], choices=DEMO_STRENGTHS,
                        metavar="K", help="artifact strengths to make every method at (0 = no "
                                          "added artifact, 3 = strongest; k > 0 writes the method "
                                          "<METHOD>@s<k>; default: 0 only)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


@reports_errors("demo-data")
def run_demo_data_command(args: argparse.Namespace) -> int:
    """Run ``deepfakemae demo-data`` with parsed ``args``; returns the exit code."""
    root = build_demo_dataset(args.output, seed=args.seed, methods=args.methods,
                              frames=args.frames, progress=not args.no_progress,
                              strengths=args.strengths)
    strengths = ", ".join(map(str, sorted(set(args.strengths))))
    print(f"demo dataset ready: {root} (FF++ layout, {len(args.methods)} methods at strength "
          f"{strengths}, splits in {root / 'splits'})")
    return 0
