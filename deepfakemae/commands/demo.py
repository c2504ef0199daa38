"""``deepfakemae demo`` (``make demo``): the whole method on the embedded demo set.

Builds the demo dataset from the bundled GRID clips, caches its faces, pretrains stage 1, trains
both stage-2 branches, tests the fused detector per manipulation method and prints the results,
then the premise table of its stage 1 on the test speakers (`deepfakemae premise`).
Every step reuses what an earlier run finished, so a rerun (or a run after an interruption)
only does what is missing. ``--folds k`` cross-validates instead (see :mod:`deepfakemae.crossval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from data_modules.indexes.ffpp import load_splits
from data_modules.pseudo import FAKE_SOURCES, PSEUDO_METHODS
from deepfakemae.branches import BRANCHES
from deepfakemae.commands.premise import cv_premise, demo_premise
from deepfakemae.crossval import (
    SCORES_FILE,
    fold_markdown,
    fold_plan,
    log_wandb_summary,
    make_folds,
    pool_scores,
    results_markdown,
    set_results,
    write_fold_splits,
    write_results_csv,
)
from deepfakemae.faces.files import atomic_write_text
from deepfakemae.plans import (
    BRANCH_STAGES,
    PRETRAIN,
    STAGES,
    Plan,
    StageFailed,
    experiments_dir,
    load_plan,
    merge_args,
    run_plan,
)

PLAN = experiments_dir() / "demo" / "plan.yaml"
CV_NAME = "demo-cv"
FAKE_SOURCE_LABELS = {"dataset": "the demo methods",
                      "pseudo": "pseudo-fakes only (no demo method seen in training)",
                      "both": "the demo methods and pseudo-fakes"}
DEFAULT_PSEUDO = ("self_blend",)


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
    parser.add_argument("--folds", type=int, default=0,
                        help="k-fold identity-disjoint cross-validation (e.g. 5: every speaker "
                             "pair is tested once, all stages retrained per fold); runs land in "
                             "<run-root>/demo-cv")
    parser.add_argument("--bootstrap", type=int, default=2000,
                        help="bootstrap resamples for the AUC confidence intervals")
    parser.add_argument("--fake-source", choices=FAKE_SOURCES, default="dataset",
                        help="stage-2 training fakes: the demo methods (dataset), self-blended "
                             "pseudo-fakes of the real videos only (pseudo: no demo method seen "
                             "in training) or both; other than dataset, runs land in "
                             "<run-root>/demo-<source> (demo-cv-<source> with --folds)")
    parser.add_argument("--pseudo-methods", type=_pseudo_list, default=DEFAULT_PSEUDO,
                        help="with --fake-source pseudo/both, comma-separated pseudo-fakes: "
                             "self_blend (default; Self-Blended Images) and/or blend_swap (a "
                             "region of another training speaker, blended in); other than the "
                             "default, the run folder gets -<methods> appended")


def _pseudo_list(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = sorted(set(methods) - set(PSEUDO_METHODS))
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"choose from {list(PSEUDO_METHODS)}, got {text!r}")
    return methods


def prepare_demo_data(args: argparse.Namespace) -> Path | None:
    """Build the demo videos and cache their faces (reusing finished work); the cache folder,
    or None when preprocessing failed."""
    from deepfakemae.commands.preprocess import add_preprocess_arguments, run_preprocess_command
    from deepfakemae.synth.demo_data import build_demo_dataset

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
        return None
    return cache


def run_name(base: str, fake_source: str, pseudo_methods: tuple[str, ...] = DEFAULT_PSEUDO) -> str:
    """Where a demo run lands under ``--run-root``: ``base``, or ``base-<source>`` for
    pseudo-fake runs (``base-<source>-<m1+m2>`` for other than self-blended pseudo-fakes), so
    they never mix with the dataset-fake runs."""
    if fake_source == "dataset":
        return base
    methods = "" if tuple(pseudo_methods) == DEFAULT_PSEUDO else "-" + "+".join(pseudo_methods)
    return f"{base}-{fake_source}{methods}"


def fake_source_label(args: argparse.Namespace) -> str:
    """The stage-2 training fakes in words."""
    label = FAKE_SOURCE_LABELS[args.fake_source]
    if args.fake_source == "dataset":
        return label
    return f"{label} ({', '.join(args.pseudo_methods)})"


def demo_plan(args: argparse.Namespace) -> Plan:
    """The demo plan, with ``--max-steps`` applied to every training stage and
    ``--fake-source`` to both stage-2 branches (named after it)."""
    plan = load_plan(PLAN, demo=True)
    for stages in plan.variants.values():
        if args.max_steps is not None:
            for name in (PRETRAIN, *BRANCH_STAGES):
                stages[name].args.setdefault("trainer", {})["max_steps"] = args.max_steps
        if args.fake_source != "dataset":
            for name in BRANCH_STAGES:
                switch = {"data": {"init_args": {"fake_source": args.fake_source}}}
                if tuple(args.pseudo_methods) != DEFAULT_PSEUDO:
                    switch["data"]["init_args"]["pseudo_methods"] = list(args.pseudo_methods)
                stages[name] = dataclasses.replace(
                    stages[name], args=merge_args(stages[name].args, switch))
    name = run_name(plan.name, args.fake_source, args.pseudo_methods)
    return dataclasses.replace(plan, name=name, resolved={**plan.resolved, "name": name})


def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo end to end (one split, or ``--folds`` cross-validation) and print results."""
    start = time.time()
    cache = prepare_demo_data(args)
    if cache is None:
        return 1
    previous = os.environ.get("DEMO_CACHE")
    os.environ["DEMO_CACHE"] = str(cache.resolve())  # read by the demo configs
    try:
        if args.folds:
            run_cross_validation(args)
        else:
            print("[3/3] stage 1, both stage-2 branches, fused detector", flush=True)
            plan = demo_plan(args)
            run_plan(plan, args.run_root, fresh=args.fresh)
            print_results(args.run_root / plan.name / "main", n_boot=args.bootstrap)
            print(f"\n{demo_premise(args.run_root / plan.name / 'main', cache, args.bootstrap)}",
                  flush=True)
    except StageFailed as err:  # interrupted or failed: nothing after it ran, a rerun resumes
        print(f"deepfakemae demo: {err}", flush=True)
        return err.exit_code
    finally:
        if previous is None:
            os.environ.pop("DEMO_CACHE", None)
        else:
            os.environ["DEMO_CACHE"] = previous
    print(f"\ndemo finished in {time.time() - start:.0f} s", flush=True)
    return 0


def run_cross_validation(args: argparse.Namespace) -> Path:
    """``--folds k``: every stage retrained per identity-disjoint fold, test scores pooled;
    writes ``cv_results.{md,csv}`` (and a W&B summary run) under ``<run-root>/demo-cv``, then
    the premise of each fold's stage 1 on its test speakers, pooled: ``premise.{md,csv,png}``
    beside them (`cv_premise`)."""
    pairs = load_splits(args.data_dir / "raw" / "splits")
    all_pairs = [p for split in ("train", "val", "test") for p in pairs[split]]
    folds = make_folds(all_pairs, args.folds)
    cv_name = run_name(CV_NAME, args.fake_source, args.pseudo_methods)
    root = args.run_root / cv_name
    splits_dirs = [write_fold_splits(f, root / "splits" / f"fold_{i}") for i, f in enumerate(folds)]
    print(f"[3/3] {args.folds}-fold cross-validation, identity-disjoint "
          f"({len(all_pairs)} speaker pairs): every stage per fold -> {root}", flush=True)
    plan = fold_plan(demo_plan(args), splits_dirs, cv_name)
    run_plan(plan, args.run_root, fresh=args.fresh)
    score_files = [root / f"fold_{i}" / "detector" / SCORES_FILE for i in range(args.folds)]
    results = set_results(pool_scores(score_files), n_boot=args.bootstrap)
    table = results_markdown(results)
    header = (f"DeepfakeMAE demo, {args.folds}-fold identity-disjoint cross-validation, "
              f"stage-2 fakes: {fake_source_label(args)}: test "
              f"scores of all folds pooled; AUC % [95% bootstrap CI, {args.bootstrap} resamples "
              "of whole videos]")
    folds_table = fold_markdown(score_files)
    folds_header = ("Each fold on its own: frame AUC % of its test speakers (2 real + 2 fake "
                    "videos per set, no interval: too few to give one)")
    atomic_write_text(root / "cv_results.md",
                      f"{header}\n\n{table}\n\n{folds_header}\n\n{folds_table}\n")
    write_results_csv(results, root / "cv_results.csv")
    wandb_dir = log_wandb_summary(results, root, f"{cv_name}/summary",
                                  {"folds": args.folds, "plan": str(PLAN),
                                   "max_steps": args.max_steps, "fake_source": args.fake_source,
                                   "pseudo_methods": list(args.pseudo_methods)})
    print(f"\n{header}:\n\n{table}\n\n{folds_header}:\n\n{folds_table}\n\n"
          f"results: {root / 'cv_results.md'}, "
          f"{root / 'cv_results.csv'}", flush=True)
    if wandb_dir is not None:
        print(f"W&B summary run: {wandb_dir}", flush=True)
    print(f"\n{cv_premise(root, splits_dirs, args.data_dir / 'cache', args.bootstrap)}",
          flush=True)
    return root


def print_results(run_dir: Path, n_boot: int = 2000) -> None:
    """Print the detector's results with bootstrap intervals, and where the figures and W&B
    runs are."""
    scores_path = run_dir / "detector" / SCORES_FILE
    results = set_results(pool_scores([scores_path]), n_boot=n_boot)
    branches = " and ".join(f"{k.title} ({k.label})" for k in BRANCHES.values())
    print(f"\nDeepfakeMAE on the demo set (fused = mean of the {branches} "
          "branches; video AUC averages a video's frame scores). AUC % with a 95% bootstrap "
          "interval over whole videos; with 2 real and 2 fake test videos per method the "
          "intervals are wide: `deepfakemae demo --folds 5` (make demo-cv) tests every "
          "speaker.\n")
    print(results_markdown(results))
    print(f"\nresults: {run_dir / 'detector' / 'results_test.json'}, scores: {scores_path}")
    for stage in STAGES:
        figures = run_dir / stage / "figures"
        if figures.exists():
            print(f"figures ({stage}): {figures}")
    offline = sorted(run_dir.glob("*/wandb/offline-run-*"))
    if offline:
        print("W&B runs (offline; upload with `wandb sync <dir>`):")
        for path in offline:
            print(f"  {path}")
    print(f"\nscore a video with these models:\n  deepfakemae score --video clip.mp4 "
          f"--run-dir {run_dir}")
