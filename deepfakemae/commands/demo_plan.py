"""The plans of ``deepfakemae demo``: the single run's (:func:`demo_plan`) and the
cross-validation's (:func:`cv_setup`), their run folders' names, the command that reruns each
(recorded in the plan) and which finished detector results must be tested again. Builds plans
only; :mod:`deepfakemae.commands.demo` runs them and prints the results."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from data_modules.indexes.ffpp import load_splits
from deepfakemae.crossval import fold_plan, make_folds, validation_name, write_fold_splits
from deepfakemae.plans import (
    BRANCH_STAGES,
    DETECTOR,
    PRETRAIN,
    RERUN_KEY,
    Plan,
    StageSpec,
    experiments_dir,
    load_plan,
    merge_args,
)
from deepfakemae.plans.load import config_value
from deepfakemae.records import REAL_METHOD
from deepfakemae.results import ResultsError, read_results
from deepfakemae.rundir import results_file
from deepfakemae.synth.methods import DEMO_METHODS, DEMO_STRENGTHS, strength_methods

PLAN = experiments_dir() / "demo" / "plan.yaml"
CV_NAME = "demo-cv"
SENSITIVITY_NAME = "demo-sensitivity"
#: the single run's test strengths: today's fakes and the strongest level (tested only)
SINGLE_TEST_STRENGTHS = (0, 3)
DEFAULT_PSEUDO = ("self_blend",)
#: --sensitivity: stage budgets times this (the overlays' budgets are `make demo`'s): the
#: Finetuning Network trained on strength 3 leaves its chance plateau after 250-450 of the
#: overlay's 480 steps on validation speakers, the Mapping Network's training BCE near step 330
#: of 600 (at the overlay's 150 every validation video scores 0.37-0.61; docs/EVIDENCE.md)
SENSITIVITY_STEPS = {"finetune": 2, "mapping": 4}


def seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """``--seed``, ascending and once each ((0,) for namespaces built before the option)."""
    given = getattr(args, "seed", None)
    if given is None:
        return (0,)
    return tuple(sorted({int(s) for s in ([given] if isinstance(given, int) else given)}))


def seed_tag(args: argparse.Namespace) -> str:
    """What ``--seed`` adds to a run folder's name after ``-seed``: "" for seed 0 alone,
    ``1`` for ``--seed 1``, ``0+1`` for the ensemble of seeds 0 and 1."""
    chosen = seeds(args)
    return "" if chosen == (0,) else "+".join(map(str, chosen))


def member_args(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    """``args`` for one seed of an ensemble (``--seed A B``): the run ``--seed <seed>`` makes."""
    return argparse.Namespace(**{**vars(args), "seed": [seed]})


def _seed(args: argparse.Namespace) -> int:
    """The one seed a plan trains (:func:`member_args` splits an ensemble into its seeds)."""
    chosen = seeds(args)
    if len(chosen) != 1:
        raise ValueError(f"a plan trains one seed, got {chosen}: build each seed's plan from "
                         "member_args(args, seed)")
    return chosen[0]


def demo_strengths(args: argparse.Namespace) -> tuple[int, ...]:
    """The artifact strengths a run builds and tests, ascending, 0 always included."""
    if args.strengths:
        chosen = args.strengths
    elif args.sensitivity:
        chosen = DEMO_STRENGTHS
    else:
        chosen = (0,) if args.folds else SINGLE_TEST_STRENGTHS
    return tuple(sorted({0, *chosen}))


def default_train_strengths(args: argparse.Namespace) -> tuple[int, ...]:
    """What stage 2 trains on when ``--train-strengths`` is not given: with --sensitivity the
    strongest tested level (a mix of all four kept stage 2 at the constant-prediction plateau:
    docs/DESIGN.md, "Artifact strengths of the demo set"), else strength 0."""
    return (max(demo_strengths(args)),) if args.sensitivity else (0,)


def train_strengths(args: argparse.Namespace) -> tuple[int, ...]:
    """The artifact strengths stage 2 trains on, ascending: ``--train-strengths`` (with
    --sensitivity), else :func:`default_train_strengths`."""
    chosen = getattr(args, "train_strengths", None)
    return tuple(sorted(set(chosen))) if chosen else default_train_strengths(args)


def demo_test_sets(args: argparse.Namespace) -> list[str]:
    """The detector's test sets: each demo method at each strength, method-major
    (``FaceSwapWarp``, ``FaceSwapWarp@s3``, ...; strength 0 keeps the plain name)."""
    return strength_methods(DEMO_METHODS, demo_strengths(args))


def _demo_source(name: str, cache: Path, split: str, methods: list[str]) -> dict:
    return {"name": name, "cache": str(cache), "dataset": "ffpp", "split": split,
            "methods": [REAL_METHOD, *methods]}


def run_name(base: str, fake_source: str, pseudo_methods: tuple[str, ...] = DEFAULT_PSEUDO,
             step_scale: int = 1, seed: str = "") -> str:
    """Where a demo run lands under ``--run-root``: ``base``, or ``base-<source>`` for
    pseudo-fake runs (``base-<source>-<m1+m2>`` for other than self-blended pseudo-fakes), so
    they never mix with the dataset-fake runs; ``-seed<tag>`` appended for ``seed``
    (:func:`seed_tag`: ``--seed N``, N > 0, or an ensemble ``--seed 0 1``), then ``-x<N>``
    for ``--step-scale N``."""
    tail = (f"-seed{seed}" if seed else "") + ("" if step_scale == 1 else f"-x{step_scale}")
    if fake_source == "dataset":
        return base + tail
    methods = "" if tuple(pseudo_methods) == DEFAULT_PSEUDO else "-" + "+".join(pseudo_methods)
    return f"{base}-{fake_source}{methods}{tail}"


def seed_args(stage: str, seed: int) -> dict:
    """The flags that make ``stage`` draw its training run from ``seed``: ``seed_everything``
    (weights' initialisation, augmentation), the training sampler's ``data.init_args.seed``
    (frame and video choice) and, for the Mapping Network, its meta split and shuffle
    (``model.init_args.seed``). The detector only tests: ``seed_everything`` alone."""
    flags: dict = {"seed_everything": seed}
    if stage != DETECTOR:
        flags["data"] = {"init_args": {"seed": seed}}
    if stage == "mapping":
        flags["model"] = {"init_args": {"seed": seed}}
    return flags


def cv_name(args: argparse.Namespace) -> str:
    """The cross-validation's folder under ``--run-root``: ``demo-cv[-<source>...]``, or
    ``demo-sensitivity`` (``-s<k+k>`` for other than all four strengths, ``-t<k+k>`` for other
    than the default training strengths), ``-x<N>`` last."""
    if not args.sensitivity:
        return run_name(CV_NAME, args.fake_source, args.pseudo_methods, args.step_scale,
                        seed_tag(args))
    strengths, trained = demo_strengths(args), train_strengths(args)
    mark = "" if strengths == DEMO_STRENGTHS else "-s" + "+".join(map(str, strengths))
    if trained != default_train_strengths(args):
        mark += "-t" + "+".join(map(str, trained))
    return run_name(SENSITIVITY_NAME + mark, "dataset", step_scale=args.step_scale,
                    seed=seed_tag(args))


def _scale_steps(spec, scale: int) -> dict:
    """``trainer.max_steps`` and ``check_val_every_n_epoch`` of a stage times ``scale`` (so it
    still validates as often per run)."""
    trainer = {}
    for key in ("max_steps", "check_val_every_n_epoch"):
        base = config_value(spec.configs, "trainer", key)
        if base is not None:
            trainer[key] = int(base) * scale
    return {"trainer": trainer}


def _with_args(spec: StageSpec, args: dict) -> StageSpec:
    """A new ``spec`` with ``args`` merged over its own (the plan's specs are not changed)."""
    return dataclasses.replace(spec, args=merge_args(spec.args, args))


def demo_plan(args: argparse.Namespace) -> Plan:
    """The demo plan, with ``--max-steps`` / ``--step-scale`` applied to every training stage,
    ``--fake-source`` to both stage-2 branches (named after it), the strength mix of
    ``--sensitivity`` to both branches' training sources, and one detector test set per demo
    method × tested strength (unless only strength 0 is tested: the configs' own sets); with
    ``--sensitivity`` the same sets again on the fold's validation speakers (``val-<set>``,
    :func:`deepfakemae.crossval.validation_name`: nothing is chosen on them, the detector reads
    the final weights, so they are a second draw of unseen speakers). Its
    ``env`` gives the stages ``DEMO_CACHE``, the face cache under ``--data-dir``."""
    plan = load_plan(PLAN, demo=True)
    cache = (args.data_dir / "cache").resolve()
    strengths, train = demo_strengths(args), train_strengths(args)
    for stages in plan.variants.values():
        if args.max_steps is not None:
            for name in (PRETRAIN, *BRANCH_STAGES):
                stages[name] = _with_args(stages[name], {"trainer": {"max_steps": args.max_steps}})
        if args.max_steps is None:
            for name in (PRETRAIN, *BRANCH_STAGES):
                scale = args.step_scale * (SENSITIVITY_STEPS.get(name, 1) if args.sensitivity else 1)
                if scale != 1:
                    stages[name] = _with_args(stages[name], _scale_steps(stages[name], scale))
        if _seed(args):
            for name in stages:
                stages[name] = _with_args(stages[name], seed_args(name, _seed(args)))
        if train != (0,):
            mix = {"data": {"init_args": {"train": [_demo_source(
                "demo", cache, "train", strength_methods(DEMO_METHODS, train))]}}}
            for name in BRANCH_STAGES:
                stages[name] = _with_args(stages[name], mix)
        if strengths != (0,):
            sets = [_demo_source(name, cache, "test", [name]) for name in demo_test_sets(args)]
            if args.sensitivity:  # each fold's validation speakers too: a second draw
                sets += [_demo_source(validation_name(name), cache, "val", [name])
                         for name in demo_test_sets(args)]
            tests = {"data": {"init_args": {"test": sets}}}
            stages[DETECTOR] = _with_args(stages[DETECTOR], tests)
        if args.fake_source != "dataset":
            for name in BRANCH_STAGES:
                switch = {"data": {"init_args": {"fake_source": args.fake_source}}}
                if tuple(args.pseudo_methods) != DEFAULT_PSEUDO:
                    switch["data"]["init_args"]["pseudo_methods"] = list(args.pseudo_methods)
                stages[name] = _with_args(stages[name], switch)
    name = run_name(plan.name, args.fake_source, args.pseudo_methods, args.step_scale,
                    seed_tag(args))
    return dataclasses.replace(plan, name=name,
                               resolved={**plan.resolved, "name": name,
                                         RERUN_KEY: demo_command(args)},
                               env={**plan.env, "DEMO_CACHE": str(cache)})


def demo_command(args: argparse.Namespace, folds: bool = False) -> str:
    """The ``deepfakemae demo`` line that makes the run folder ``args`` name (the options its
    name stands for): the single run's, or with ``folds`` the cross-validation's."""
    parts = ["deepfakemae demo"]
    if folds:
        parts.append(f"--folds {args.folds}")
        if args.sensitivity:
            parts.append("--sensitivity")
            if demo_strengths(args) != DEMO_STRENGTHS:
                parts.append("--strengths " + " ".join(map(str, demo_strengths(args))))
            if train_strengths(args) != default_train_strengths(args):
                parts.append("--train-strengths " + " ".join(map(str, train_strengths(args))))
    if args.fake_source != "dataset":
        parts.append(f"--fake-source {args.fake_source}")
        if tuple(args.pseudo_methods) != DEFAULT_PSEUDO:
            parts.append(f"--pseudo-methods {','.join(args.pseudo_methods)}")
    if seed_tag(args):
        parts.append("--seed " + " ".join(map(str, seeds(args))))
    if args.step_scale != 1:
        parts.append(f"--step-scale {args.step_scale}")
    return " ".join(parts)


def detector_test_names(plan: Plan, variant: str) -> list[str]:
    """The names of the test sets a variant's detector stage is configured with."""
    spec = plan.variants[variant][DETECTOR]
    sets = (spec.args.get("data", {}).get("init_args", {}).get("test")
            or config_value(spec.configs, "data", "init_args", "test") or [])
    return [s["name"] for s in sets]


def stale_tests(plan: Plan, run_root: Path) -> list[str]:
    """Variants whose finished detector results hold other test sets than the plan's (e.g. a
    ``make demo`` run from before the strength-3 test sets; or results that cannot be read):
    their detector must run again."""
    stale = []
    for variant in plan.variants:
        path = results_file(run_root / plan.name / variant / DETECTOR)
        if path.is_file():
            try:
                found = set(read_results(path).sets)
            except ResultsError:
                found = None
            if found != set(detector_test_names(plan, variant)):
                stale.append(variant)
    return stale


def cv_setup(args: argparse.Namespace) -> tuple[Path, list[Path], Plan]:
    """The cross-validation's run folder, its folds' split files (written) and its plan (a
    variant ``fold_i`` per fold), built without running anything."""
    pairs = load_splits(args.data_dir / "raw" / "splits")
    all_pairs = [p for split in ("train", "val", "test") for p in pairs[split]]
    folds = make_folds(all_pairs, args.folds)
    name = cv_name(args)
    root = args.run_root / name
    splits_dirs = [write_fold_splits(f, root / "splits" / f"fold_{i}") for i, f in enumerate(folds)]
    plan = fold_plan(demo_plan(args), splits_dirs, name)
    plan = dataclasses.replace(plan, resolved={**plan.resolved,
                                               RERUN_KEY: demo_command(args, folds=True)})
    return root, splits_dirs, plan
