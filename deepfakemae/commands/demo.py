"""``deepfakemae demo`` (``make demo``): the whole method on the embedded demo set.

Builds the demo dataset from the bundled GRID clips, caches its faces, pretrains stage 1, trains
both stage-2 branches, tests the fused detector per manipulation method and prints the results,
then the premise table of its stage 1 on the test speakers (`deepfakemae premise`).
Every step reuses what an earlier run finished, so a rerun (or a run after an interruption)
only does what is missing. ``--folds k`` cross-validates instead (see :mod:`deepfakemae.crossval`).
The plans it runs are built by :mod:`deepfakemae.commands.demo_plan`; this module prepares the
data, runs them and prints the results.

Artifact strengths (docs/DESIGN.md, "Artifact strengths of the demo set"): the single run
trains stage 2 on strength 0 and tests every method at strengths 0 and 3 (``<Method>@s3``);
``--folds k`` alone keeps strength 0 only (the cross-validated baseline); ``--folds k
--sensitivity`` trains stage 2 on every method at ``--train-strengths`` (default: the strongest
of ``--strengths``, default 0-3) and tests each method × strength, pooled over folds, into a curve
(``sensitivity.{md,csv,png}``) under ``<run-root>/demo-sensitivity``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_modules.pseudo import FAKE_SOURCES, PSEUDO_METHODS
from deepfakemae.branches import BRANCHES
from deepfakemae.commands.demo_plan import (
    DEFAULT_PSEUDO,
    PLAN,
    cv_name,
    cv_setup,
    demo_plan,
    demo_strengths,
    demo_test_sets,
    detector_test_names,
    member_args,
    seeds,
    stale_tests,
    train_strengths,
)
from deepfakemae.commands.premise import cv_premise, demo_premise
from deepfakemae.crossval import (
    fold_markdown,
    log_wandb_summary,
    paired_markdown,
    pool_scores,
    results_markdown,
    run_mean,
    sensitivity_markdown,
    set_results,
    split_draws,
    write_results_csv,
    write_sensitivity_csv,
    write_sensitivity_plot,
)
from deepfakemae.errors import UsageError, reports_errors
from deepfakemae.faces.files import atomic_write_text
from deepfakemae.plans import (
    DETECTOR,
    STAGES,
    Plan,
    run_plan,
)
from deepfakemae.rundir import results_file, scores_file
from deepfakemae.synth.methods import DEMO_METHODS, DEMO_STRENGTHS

FAKE_SOURCE_LABELS = {"dataset": "the demo methods",
                      "pseudo": "pseudo-fakes only (no demo method seen in training)",
                      "both": "the demo methods and pseudo-fakes"}
#: side of the demo's cached face crops (the demo presets' input size)
DEMO_FACE_SIZE = 112


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
    parser.add_argument("--sensitivity", action="store_true",
                        help="with --folds: stage 2 trains on every demo method at "
                             "--train-strengths, and each method x strength of --strengths is a "
                             "test set of its own; pooled over folds into a curve of AUC against "
                             "strength (sensitivity.{md,csv,png}); runs land in "
                             "<run-root>/demo-sensitivity")
    parser.add_argument("--strengths", nargs="+", type=int, choices=DEMO_STRENGTHS, default=None,
                        metavar="K",
                        help="artifact strengths built and tested (0 is always included). "
                             "Default: 0 3 for the single run (training on 0 only), 0 for "
                             "--folds, 0 1 2 3 for --sensitivity (see --train-strengths); "
                             "non-default strengths with --sensitivity get -s<k+k> appended to "
                             "the run folder")
    parser.add_argument("--train-strengths", nargs="+", type=int, choices=DEMO_STRENGTHS,
                        default=None, metavar="K",
                        help="with --sensitivity: the artifact strengths stage 2 trains on, each "
                             "one of --strengths (default: the strongest, 3; a mix of all four "
                             "left stage 2 at chance on validation speakers, docs/DESIGN.md); "
                             "other than the default, the run folder gets -t<k+k> appended")
    parser.add_argument("--step-scale", type=_positive_int, default=1,
                        help="multiply every training stage's step budget and validation "
                             "interval by this (e.g. 10 on a GPU); the run folder gets -x<N> "
                             "appended")
    parser.add_argument("--seed", type=_nonnegative_int, nargs="+", default=[0], metavar="N",
                        help="seed of every stage's training draw (seed_everything, the training "
                             "sampler, the Mapping Network's meta split): another training run on "
                             "the same videos and folds; other than 0, the run folder gets "
                             "-seed<N> appended. With --folds, several seeds (e.g. 0 1) make an "
                             "ensemble: the cross-validation once per seed, then each fold's "
                             "detector scores a video by the mean of its seeds' runs, pooled "
                             "into <cv folder>-seed0+1")
    parser.add_argument("--prepare-only", action="store_true",
                        help="build the demo set (at the run's strengths) and its face cache, "
                             "then stop: e.g. on a CPU before a GPU run")
    parser.add_argument("--fold", type=int, default=None,
                        help="with --folds: run only fold I's stages and stop (one process per "
                             "fold in parallel, e.g. on a GPU); the same command without --fold "
                             "then finds every fold done and pools them")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def check_demo_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with a combination of options (the message names the fix), or None."""
    if args.sensitivity and not args.folds:
        return "--sensitivity is a cross-validation: add --folds 5"
    if args.sensitivity and args.fake_source != "dataset":
        return ("--sensitivity trains stage 2 on the demo methods (--train-strengths); drop "
                "--fake-source")
    if args.train_strengths and not args.sensitivity:
        return "--train-strengths chooses the training mix of --sensitivity: add --folds 5 --sensitivity"
    missing = sorted(set(args.train_strengths or ()) - set(demo_strengths(args)))
    if missing:
        return (f"--train-strengths {' '.join(map(str, missing))} is not built: add it to "
                f"--strengths (now {' '.join(map(str, demo_strengths(args)))})")
    if args.step_scale != 1 and args.max_steps is not None:
        return "give --max-steps or --step-scale, not both"
    if len(set(args.seed)) != len(args.seed):
        return f"--seed {' '.join(map(str, args.seed))}: give each seed once"
    if len(args.seed) > 1 and not args.folds:
        return ("several --seed values make a per-fold ensemble of a cross-validation: add "
                "--folds 5")
    if args.fold is not None and not (args.folds and 0 <= args.fold < args.folds):
        return f"--fold needs --folds k and 0 <= fold < k, got --fold {args.fold}"
    return None


def _pseudo_list(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = sorted(set(methods) - set(PSEUDO_METHODS))
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"choose from {list(PSEUDO_METHODS)}, got {text!r}")
    return methods


def prepare_demo_data(args: argparse.Namespace) -> Path | None:
    """Build the demo videos and cache their faces (reusing finished work); the cache folder,
    or None when preprocessing failed."""
    from data_modules.indexes import records_for_dataset
    from deepfakemae.commands.preprocess import face_detector_of
    from deepfakemae.faces.pipeline import FaceConfig
    from deepfakemae.faces.runner import run_preprocess
    from deepfakemae.synth.demo_data import build_demo_dataset

    raw, cache = args.data_dir / "raw", args.data_dir / "cache"
    strengths = demo_strengths(args)
    print(f"[1/3] demo dataset (10 GRID speakers, 4 manipulation methods at artifact "
          f"strength {', '.join(map(str, strengths))}) -> {raw}", flush=True)
    clip_frames = None if args.max_steps is None else max(args.frames, 8)
    build_demo_dataset(raw, frames=clip_frames, strengths=strengths)  # DemoDataError: exit 1
    print(f"[2/3] faces: detect, align, cache -> {cache}", flush=True)
    config = FaceConfig(frames=args.frames, size=DEMO_FACE_SIZE, detector=face_detector_of(cache))
    summary = run_preprocess(records_for_dataset("demo", raw), cache, config,
                             workers=args.workers)
    print(summary.format())
    print(f"face cache: {cache} (manifest {cache / 'manifest.jsonl'})")
    if summary.num_unusable:
        print("deepfakemae demo: preprocessing failed; see the manifest above", flush=True)
        return None
    return cache


def fake_source_label(args: argparse.Namespace) -> str:
    """The stage-2 training fakes in words."""
    label = FAKE_SOURCE_LABELS[args.fake_source]
    if args.fake_source == "dataset":
        return label
    return f"{label} ({', '.join(args.pseudo_methods)})"


def run_demo_plan(plan: Plan, run_root: Path, fresh: bool = False,
                  variants: list[str] | None = None) -> None:
    """`run_plan`, then the detector again (fresh) for every variant whose finished results
    hold other test sets than the plan now names."""
    run_plan(plan, run_root, fresh=fresh, variants=variants)
    stale = [v for v in stale_tests(plan, run_root) if variants is None or v in variants]
    if stale:
        print(f"  the detector results of {', '.join(stale)} hold other test sets than "
              f"{', '.join(detector_test_names(plan, stale[0]))}: testing again", flush=True)
        run_plan(plan, run_root, fresh=True, stages=[DETECTOR], variants=stale)


@reports_errors("demo")
def run_demo_command(args: argparse.Namespace) -> int:
    """Run the demo end to end (one split, or ``--folds`` cross-validation) and print results."""
    problem = check_demo_arguments(args)
    if problem:
        raise UsageError(problem)
    start = time.time()
    cache = prepare_demo_data(args)
    if cache is None:
        return 1
    if args.prepare_only:
        print(f"demo set and faces ready: {cache} ({time.time() - start:.0f} s)", flush=True)
        return 0
    # StageFailed (interrupted or failed) ends the command: nothing after it ran, a rerun resumes
    if args.folds and len(seeds(args)) > 1:
        run_seed_ensemble(args)
    elif args.folds:
        run_cross_validation(args)
    else:
        print("[3/3] stage 1, both stage-2 branches, fused detector", flush=True)
        plan = demo_plan(args)
        run_demo_plan(plan, args.run_root, fresh=args.fresh)
        print_results(args.run_root / plan.name / "main", n_boot=args.bootstrap,
                      strengths=demo_strengths(args))
        premise = demo_premise(args.run_root / plan.name / "main", cache, args.bootstrap,
                               methods=demo_test_sets(args))
        print(f"\n{premise}", flush=True)
    print(f"\ndemo finished in {time.time() - start:.0f} s", flush=True)
    return 0


def training_label(args: argparse.Namespace) -> str:
    """The stage-2 training fakes in words, strengths included."""
    if not args.sensitivity:
        return fake_source_label(args)
    strengths = ", ".join(map(str, train_strengths(args)))
    return (f"every demo method at artifact strength {strengths} "
            f"({len(DEMO_METHODS) * len(train_strengths(args))} fake methods, an equal share of "
            "the fake draws each; validation on strength 0)")


def run_cross_validation(args: argparse.Namespace) -> Path:
    """``--folds k``: every stage retrained per identity-disjoint fold, test scores pooled;
    writes ``cv_results.{md,csv}`` (and a W&B summary run) under ``<run-root>/demo-cv`` (with
    ``--sensitivity`` ``<run-root>/demo-sensitivity``, plus the curve: ``sensitivity.{md,csv,png}``,
    the plot also in W&B), then the premise of each fold's stage 1 on its test speakers, pooled:
    ``premise.{md,csv,png}`` beside them (`cv_premise`, one row per method × strength).
    With ``--sensitivity`` each fold's detector also scores its validation speakers: the curve
    of that second draw and of the two runs' mean per video (:func:`second_draw`).
    With ``--fold i`` only fold ``i``'s stages run, and nothing is pooled."""
    root, splits_dirs, plan = cv_setup(args)
    name = plan.name
    if args.fold is not None:
        print(f"[3/3] fold {args.fold} of the {args.folds}-fold cross-validation -> {root}",
              flush=True)
        run_demo_plan(plan, args.run_root, fresh=args.fresh, variants=[f"fold_{args.fold}"])
        print(f"fold {args.fold} done; the same command without --fold pools the folds once all "
              "are done", flush=True)
        return root
    print(f"[3/3] {args.folds}-fold cross-validation, identity-disjoint "
          f"({len(splits_dirs)} folds): every stage per fold -> {root}", flush=True)
    run_demo_plan(plan, args.run_root, fresh=args.fresh)
    score_files = [scores_file(root / f"fold_{i}" / DETECTOR) for i in range(args.folds)]
    pooled, validation = split_draws(pool_scores(score_files))
    results = set_results(pooled, n_boot=args.bootstrap)
    table = results_markdown(results)
    what = "sensitivity, " if args.sensitivity else ""
    sets = "test sets: each method x artifact strength; " if len(demo_strengths(args)) > 1 else ""
    header = (f"DeepfakeMAE demo, {what}{args.folds}-fold identity-disjoint cross-validation, "
              f"stage-2 fakes: {training_label(args)}: {sets}test scores of all folds pooled; "
              f"AUC % [95% bootstrap CI, {args.bootstrap} resamples of whole videos]")
    folds_table = fold_markdown(score_files, sets=list(pooled))
    folds_header = ("Each fold on its own: frame AUC % of its test speakers (2 real + 2 fake "
                    "videos per set, no interval: too few to give one)")
    folds_table += ("\n\nEach fake beside its own real (the target video it was made on; "
                    "video means, all folds):\n\n" + paired_markdown(pooled))
    curve = ""
    images = {}
    if args.sensitivity:
        curve = sensitivity_curve(results, root, images,
                                  f"{name}: {args.folds} folds pooled, 95% bootstrap bands")
        if validation:
            curve += second_draw(validation, pooled, root, name, args, images)
        atomic_write_text(root / "sensitivity.md", f"{header}\n\n{curve}")
    atomic_write_text(root / "cv_results.md",
                      f"{header}\n\n{curve}{table}\n\n{folds_header}\n\n{folds_table}\n")
    write_results_csv(results, root / "cv_results.csv")
    wandb_dir = log_wandb_summary(results, root, f"{name}/summary",
                                  {"folds": args.folds, "plan": str(PLAN),
                                   "max_steps": args.max_steps, "step_scale": args.step_scale,
                                   "fake_source": args.fake_source,
                                   "pseudo_methods": list(args.pseudo_methods),
                                   "sensitivity": args.sensitivity,
                                   "test_strengths": list(demo_strengths(args)),
                                   "train_strengths": list(train_strengths(args))},
                                  images=images)
    print(f"\n{header}:\n\n{curve}{table}\n\n{folds_header}:\n\n{folds_table}\n\n"
          f"results: {root / 'cv_results.md'}, {root / 'cv_results.csv'}"
          + (f", {root / 'sensitivity.png'}" if args.sensitivity else ""), flush=True)
    if wandb_dir is not None:
        print(f"W&B summary run: {wandb_dir}", flush=True)
    premise = cv_premise(root, splits_dirs, args.data_dir / "cache", args.bootstrap,
                         methods=demo_test_sets(args))
    print(f"\n{premise}", flush=True)
    return root


def run_seed_ensemble(args: argparse.Namespace) -> Path | None:
    """``--folds k --seed A B ...``: the cross-validation of each seed, in the folder ``--seed
    A`` alone makes (:func:`run_cross_validation`; finished ones are reused, a rerun resumes),
    then the per-fold ensemble of the seeds pooled (:func:`seed_ensemble`). With ``--fold i``
    only fold ``i`` of each seed runs and nothing is pooled."""
    roots = [run_cross_validation(member_args(args, seed)) for seed in seeds(args)]
    if args.fold is not None:
        return None
    return seed_ensemble(args, roots)


def seed_ensemble(args: argparse.Namespace, roots: list[Path]) -> Path:
    """Each fold's detector as the ensemble of its seeds' runs, pooled over folds: a video's
    score is the mean of the video means of the runs in ``roots`` (one finished
    cross-validation folder per seed, the same folds and videos), video-level AUC with 95%
    intervals (:func:`deepfakemae.crossval.run_mean`). Writes ``cv_results.{md,csv}`` (and with
    ``--sensitivity`` ``sensitivity.{md,csv,png}`` and, where the folds scored their
    validation speakers, the ensemble's second draw: :func:`second_draw`) under
    ``<run-root>/<cv folder>-seed<A+B>``, plus a W&B summary run; returns that folder."""
    root = args.run_root / cv_name(args)
    root.mkdir(parents=True, exist_ok=True)
    name = root.name
    draws = [split_draws(pool_scores([scores_file(r / f"fold_{i}" / DETECTOR)
                                      for i in range(args.folds)])) for r in roots]
    test = run_mean([pooled for pooled, _ in draws])
    results = set_results(test, n_boot=args.bootstrap, levels=("video",))
    chosen = ", ".join(map(str, seeds(args)))
    what = "sensitivity, " if args.sensitivity else ""
    header = (f"DeepfakeMAE demo, {what}{args.folds}-fold identity-disjoint cross-validation, "
              f"stage-2 fakes: {training_label(args)}; each fold's detector is the ensemble of "
              f"seeds {chosen}: a video's score is the mean of its {len(roots)} runs' video "
              f"means (runs: {', '.join(str(r) for r in roots)}); test scores of all folds "
              f"pooled; video AUC % [95% bootstrap CI, {args.bootstrap} resamples of whole "
              "videos]")
    curve, images = "", {}
    if args.sensitivity:
        curve = sensitivity_curve(results, root, images, f"{name}: ensemble of seeds {chosen}, "
                                  f"{args.folds} folds pooled, 95% bootstrap bands")
        validation = [v for _, v in draws]
        if all(validation):
            curve += second_draw(run_mean(validation), test, root, name, args, images,
                                 runs=f"ensemble of seeds {chosen}", levels=("video",))
        atomic_write_text(root / "sensitivity.md", f"{header}\n\n{curve}")
    table = results_markdown(results)
    atomic_write_text(root / "cv_results.md", f"{header}\n\n{curve}{table}\n")
    write_results_csv(results, root / "cv_results.csv")
    wandb_dir = log_wandb_summary(results, root, f"{name}/summary",
                                  {"folds": args.folds, "seeds": list(seeds(args)),
                                   "members": [str(r) for r in roots],
                                   "sensitivity": args.sensitivity,
                                   "step_scale": args.step_scale,
                                   "test_strengths": list(demo_strengths(args)),
                                   "train_strengths": list(train_strengths(args))},
                                  images=images)
    print(f"\n{header}:\n\n{curve}{table}\n\nresults: {root / 'cv_results.md'}, "
          f"{root / 'cv_results.csv'}", flush=True)
    if wandb_dir is not None:
        print(f"W&B summary run: {wandb_dir}", flush=True)
    return root


def sensitivity_curve(results: list, root: Path, images: dict, title: str) -> str:
    """The fused video AUC against artifact strength as markdown; writes
    ``sensitivity.{csv,png}`` under ``root`` (every branch and level found in ``results``) and
    adds the plot to ``images``."""
    write_sensitivity_csv(results, root / "sensitivity.csv")
    images["cv/sensitivity"] = write_sensitivity_plot(results, root / "sensitivity.png", title)
    return (f"Fused video AUC % against artifact strength [95% CI] (plot: "
            f"{root / 'sensitivity.png'}; every branch and level: "
            f"{root / 'sensitivity.csv'}):\n\n{sensitivity_markdown(results)}\n\n")


def second_draw(validation: dict, pooled: dict, root: Path, name: str,
                args: argparse.Namespace, images: dict, runs: str = "training run",
                levels: tuple[str, ...] | None = None) -> str:
    """The sensitivity tables of the second draw (each fold's validation speakers, scored by
    ``runs``: the fold's training run, or its ensemble of seeds) and of the mean of the two
    draws per video, as markdown; writes ``sensitivity_second_draw.csv``,
    ``sensitivity_two_run_mean.{csv,png}`` under ``root`` and adds the plot to ``images``.
    ``levels``: the AUC levels of the second draw (default video and frame; video only
    where its rows are video means)."""
    second = set_results(validation, n_boot=args.bootstrap,
                         **({"levels": levels} if levels else {}))
    mean = set_results(run_mean([pooled, validation]), n_boot=args.bootstrap,
                       levels=("video",))
    write_sensitivity_csv(second, root / "sensitivity_second_draw.csv")
    write_sensitivity_csv(mean, root / "sensitivity_two_run_mean.csv")
    images["cv/sensitivity_two_run_mean"] = write_sensitivity_plot(
        mean, root / "sensitivity_two_run_mean.png",
        f"{name}: mean of the two runs per video, 95% bootstrap bands")
    return (f"The same videos scored by a second {runs}: each fold also scores its "
            "validation speakers, which its networks never trained on and nothing was chosen "
            "on (the detector reads the final weights); fold k's validation speakers are fold "
            "k-1's test speakers (every branch and level: "
            f"{root / 'sensitivity_second_draw.csv'}):\n\n{sensitivity_markdown(second)}\n\n"
            f"The mean of the two draws' scores per video (each draw a {runs}, neither having "
            f"seen the speaker; plot: {root / 'sensitivity_two_run_mean.png'}; every branch: "
            f"{root / 'sensitivity_two_run_mean.csv'}):\n\n{sensitivity_markdown(mean)}\n\n")


def print_results(run_dir: Path, n_boot: int = 2000, strengths: tuple[int, ...] = (0,)) -> None:
    """Print the detector's results with bootstrap intervals (and, with more than one artifact
    strength tested, the fused video AUC per method × strength), and where the figures and W&B
    runs are."""
    scores_path = scores_file(run_dir / DETECTOR)
    results = set_results(pool_scores([scores_path]), n_boot=n_boot)
    branches = " and ".join(f"{k.title} ({k.label})" for k in BRANCHES.values())
    marked = [k for k in strengths if k]
    levels = ("" if not marked else
              f" Rows <method>@s{marked[-1]}: the same fakes at artifact strength {marked[-1]} "
              "(docs/DESIGN.md: lower generator resolution, harder blend edge, less colour "
              "matching), tested only: stage 2 trained on strength 0.")
    print(f"\nDeepfakeMAE on the demo set (fused = mean of the {branches} "
          "branches; video AUC averages a video's frame scores). AUC % with a 95% bootstrap "
          "interval over whole videos; with 2 real and 2 fake test videos per method the "
          "intervals are wide: `deepfakemae demo --folds 5` (make demo-cv) tests every "
          f"speaker.{levels}\n")
    print(results_markdown(results))
    if marked:
        print(f"\nfused video AUC % by artifact strength:\n\n{sensitivity_markdown(results)}")
    print(f"\nresults: {results_file(run_dir / DETECTOR)}, scores: {scores_path}")
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
