"""``deepfakemae demo`` (``make demo``): the whole method on the embedded demo set.

Builds the demo dataset from the bundled GRID clips, caches its faces, pretrains stage 1, trains
both stage-2 branches, tests the fused detector per manipulation method and prints the results.
Every step reuses what an earlier run finished, so a rerun (or a run after an interruption)
only does what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from deepfakemae.experiments import load_plan, run_plan

PLAN = Path(__file__).resolve().parents[2] / "experiments" / "demo" / "plan.yaml"
BRANCHES = ("fused", "F", "M")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deepfakemae demo``."""
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"),
                        help="where the demo videos (raw/) and their face cache (cache/) go")
    parser.add_argument("--run-root", type=Path, default=Path("runs"),
                        help="runs land in <run-root>/demo/main/<stage>")
    parser.add_argument("--frames", type=int, default=32, help="faces cached per video")
    parser.add_argument("--workers", type=int, default=2, help="face-pipeline processes")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="cap every training stage (default: the demo overlays' settings)")
    parser.add_argument("--fresh", action="store_true", help="retrain the stages from scratch")


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo end to end and print the results table."""
    from deepfakemae.commands.preprocess import add_preprocess_arguments, run_preprocess_command
    from deepfakemae.synth.demo_data import build_demo_dataset

    start = time.time()
    raw, cache = args.data_dir / "raw", args.data_dir / "cache"
    print(f"[1/3] demo dataset (10 GRID speakers, 4 manipulation methods) -> {raw}", flush=True)
    clip_frames = None if args.max_steps is None else max(args.frames, 8)
    build_demo_dataset(raw, frames=clip_frames)
    print(f"[2/3] faces: detect, align, cache -> {cache}", flush=True)
    preprocess = add_preprocess_arguments(argparse.ArgumentParser())
    code = run_preprocess_command(preprocess.parse_args([
        "--dataset", "demo", "--root", str(raw), "--output", str(cache), "--size", "112",
        "--frames", str(args.frames), "--workers", str(args.workers)]))
    if code != 0:
        print("deepfakemae demo: preprocessing failed; see the manifest above", flush=True)
        return code
    print("[3/3] stage 1, both stage-2 branches, fused detector", flush=True)
    previous = os.environ.get("DEMO_CACHE")
    os.environ["DEMO_CACHE"] = str(cache.resolve())  # read by the demo configs
    try:
        plan = load_plan(PLAN, demo=True)
        if args.max_steps is not None:
            for stages in plan.variants.values():
                for name in ("pretrain", "finetune", "mapping"):
                    stages[name].args.setdefault("trainer", {})["max_steps"] = args.max_steps
        run_plan(plan, args.run_root, fresh=args.fresh)
    finally:
        if previous is None:
            os.environ.pop("DEMO_CACHE", None)
        else:
            os.environ["DEMO_CACHE"] = previous
    run_dir = args.run_root / plan.name / "main"
    print_results(run_dir)
    print(f"\ndemo finished in {time.time() - start:.0f} s", flush=True)
    return 0


def results_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per test set, video and frame AUC (%) per branch."""
    head = ["test set"] + [f"{b} {lvl} AUC" for b in BRANCHES for lvl in ("video", "frame")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(results):
        cells = [name]
        for branch in BRANCHES:
            for level in ("video_auc", "frame_auc"):
                value = results[name].get(f"{branch}/{level}")
                cells.append("—" if value is None else f"{100 * value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_results(run_dir: Path) -> None:
    """Print the detector's results table and where the figures and W&B runs are."""
    results_path = run_dir / "detector" / "results_test.json"
    results = json.loads(results_path.read_text())
    print("\nDeepfakeMAE on the demo set (fused = mean of the Finetuning (F) and Mapping (M) "
          "branches; video AUC averages a video's frame scores):\n")
    print(results_table(results))
    print(f"\nresults: {results_path}")
    for stage in ("pretrain", "finetune", "mapping", "detector"):
        figures = run_dir / stage / "figures"
        if figures.exists():
            print(f"figures ({stage}): {figures}")
    offline = sorted(run_dir.glob("*/wandb/offline-run-*"))
    if offline:
        print("W&B runs (offline; upload with `wandb sync <dir>`):")
        for path in offline:
            print(f"  {path}")
