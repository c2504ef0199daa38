"""Identity-disjoint k-fold cross-validation of the whole method, and pooled results with
bootstrap confidence intervals.

Folds are built from FF++-style id pairs (a pair owns two identities, their reals and the fakes
made between them): the pairs are dealt round-robin into ``k`` groups; fold ``i`` tests on group
``i``, validates (checkpoint choice, early stopping) on group ``i-1`` and trains every stage —
stage 1 included — on the rest. Every identity is a test identity exactly once, and no identity
of a fold's test or validation group is seen in its training.

Each fold is a variant of a plan run by :func:`deepfakemae.plans.run_plan` (so a rerun
resumes), with ``--data.init_args.splits_dir`` pointing at the fold's split files. The detector's
per-frame test scores (``scores_test.csv``) of all folds are pooled per test set and AUCs are
reported with 95% bootstrap intervals that resample whole videos
(:func:`deepfakemae.metrics.bootstrap_auc`).

A fold can also score its validation speakers (sets named ``val-<set>``,
:func:`validation_name`): they are unseen by that fold's networks when nothing was chosen on
them, and fold ``i``'s validation group is fold ``i-1``'s test group, so every video is scored
by a second training run. :func:`split_draws` separates the two draws and :func:`run_mean`
averages each video's scores over runs (a two-run ensemble of runs that never saw its speaker;
or the seeds of one fold, ``deepfakemae demo --seed 0 1``).

Test sets named after a demo method at an artifact strength (``FaceSwapWarp@s3``; strength 0
keeps the plain name) group into a sensitivity curve per method: :func:`strength_groups`,
:func:`sensitivity_markdown`, :func:`write_sensitivity_csv` and :func:`write_sensitivity_plot`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from deepfakemae.branches import FUSED, ordered_labels
from deepfakemae.faces.files import atomic_path, atomic_write, atomic_write_text
from deepfakemae.metrics import Interval, ScoredSet, bootstrap_auc, weighted_auc
from deepfakemae.plans import STAGES, Plan, merge_args
from deepfakemae.results import read_scores_csv
from deepfakemae.synth.methods import split_strength
from deepfakemae.visualize import png_bytes, sensitivity_figure

Pair = tuple[str, str]
LEVELS = ("video", "frame")
#: the name prefix of a set scored on a fold's validation speakers (the second draw)
VALIDATION_PREFIX = "val-"


def make_folds(pairs: list[Pair], k: int) -> list[dict[str, list[Pair]]]:
    """``k`` identity-disjoint folds over ``pairs``: ``{"train", "val", "test"}`` pair lists each.

    Fold ``i`` tests group ``i`` and validates on group ``i-1`` (groups are the pairs dealt
    round-robin); each pair is in exactly one fold's test split.
    """
    if k < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (test, validation and "
                         f"training groups), got {k}")
    if len(pairs) < k:
        raise ValueError(f"{k} folds need at least {k} id pairs, got {len(pairs)}")
    groups = [pairs[i::k] for i in range(k)]
    folds = []
    for i in range(k):
        val = (i - 1) % k
        train = [p for g, group in enumerate(groups) if g not in (i, val) for p in group]
        folds.append({"train": train, "val": list(groups[val]), "test": list(groups[i])})
    return folds


def write_fold_splits(fold: dict[str, list[Pair]], directory: Path) -> Path:
    """Write a fold as FF++-format split files ``train/val/test.json`` in ``directory``
    (atomically: folds run in parallel processes read them while another rewrites them)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, pairs in fold.items():
        atomic_write_text(directory / f"{split}.json", json.dumps([list(p) for p in pairs]))
    return directory


def fold_plan(base: Plan, splits_dirs: list[Path], name: str) -> Plan:
    """``base``'s first variant once per fold (variants ``fold_0`` ...), every stage reading its
    fold's splits (``--data.init_args.splits_dir``)."""
    template = next(iter(base.variants.values()))
    variants = {}
    for i, splits in enumerate(splits_dirs):
        override = {"data": {"init_args": {"splits_dir": str(splits.resolve())}}}
        variants[f"fold_{i}"] = {
            stage: dataclasses.replace(template[stage],
                                       args=merge_args(template[stage].args, override))
            if template[stage].reuse is None else template[stage] for stage in STAGES}
    resolved = {**base.resolved, "name": name,
                "variants": {v: {s: {"args": spec.args} for s, spec in stages.items()}
                             for v, stages in variants.items()}}
    return dataclasses.replace(base, name=name, variants=variants, resolved=resolved)


def _merge_sets(parts: list[ScoredSet]) -> ScoredSet:
    branches = sorted(set.intersection(*(set(p.scores) for p in parts)))
    return ScoredSet(keys=[k for p in parts for k in p.keys],
                     frames=np.concatenate([p.frames for p in parts]),
                     labels=np.concatenate([p.labels for p in parts]),
                     scores={b: np.concatenate([p.scores[b] for p in parts]) for b in branches})


def pool_scores(score_files: list[Path]) -> dict[str, ScoredSet]:
    """The test sets of several ``scores_test.csv`` files, concatenated per set name."""
    parts: dict[str, list[ScoredSet]] = {}
    for path in score_files:
        for name, scored in read_scores_csv(path).items():
            parts.setdefault(name, []).append(scored)
    return {name: _merge_sets(sets) for name, sets in sorted(parts.items())}


@dataclasses.dataclass
class SetResult:
    """Pooled AUCs of one test set: ``auc[(branch, level)]`` with intervals, and its size."""

    name: str
    num_real: int
    num_fake: int
    auc: dict[tuple[str, str], Interval]


def validation_name(name: str) -> str:
    """The name of test set ``name`` scored on a fold's validation speakers."""
    return VALIDATION_PREFIX + name


def split_draws(pooled: dict[str, ScoredSet]) -> tuple[dict[str, ScoredSet], dict[str, ScoredSet]]:
    """``(test sets, validation sets)`` of pooled scores; the validation sets under their test
    names (``val-FaceSwapWarp@s3`` -> ``FaceSwapWarp@s3``)."""
    test = {n: s for n, s in pooled.items() if not n.startswith(VALIDATION_PREFIX)}
    validation = {n[len(VALIDATION_PREFIX):]: s for n, s in pooled.items()
                  if n.startswith(VALIDATION_PREFIX)}
    return test, validation


def run_mean(draws: list[dict[str, ScoredSet]]) -> dict[str, ScoredSet]:
    """Per set in every draw, each video's mean score over the runs: one row per video and run
    (that run's mean frame score), so a video's video-level score is the mean of its runs'
    video means (the runs: two draws of one cross-validation, or the seeds of an ensemble).

    Video-level only (the rows are video means, not frames). Raises :class:`ValueError` when a
    set's draws hold other videos or other labels (each draw must score every video of the
    set once: folds whose validation groups are the test groups of other folds, or seeds of
    the same folds)."""
    if len(draws) < 2:
        raise ValueError(f"run_mean needs two draws or more, got {len(draws)}")
    out = {}
    for name in sorted(set.intersection(*(set(d) for d in draws))):
        means = []
        for draw in (d[name] for d in draws):
            labels = dict(zip(draw.keys, draw.labels.tolist(), strict=True))
            means.append(({branch: _video_means(draw, branch)[0] for branch in draw.scores},
                          labels))
        labels = means[0][1]
        for _, other in means[1:]:
            if other != labels:
                odd = (sorted(set(labels) ^ set(other))
                       or sorted(k for k in labels if labels[k] != other[k]))
                raise ValueError(f"run_mean: set {name!r} holds other videos in its draws "
                                 f"or other labels (e.g. {odd[:3]}): each draw must score "
                                 "every video of the set once")
        keys, n = sorted(labels), len(means)
        branches = sorted(set.intersection(*(set(m) for m, _ in means)))
        out[name] = ScoredSet(
            keys=[k for k in keys for _ in range(n)],
            frames=np.zeros(n * len(keys), dtype=np.int64),
            labels=np.array([labels[k] for k in keys for _ in range(n)]),
            scores={br: np.array([m[br][k] for k in keys for m, _ in means])
                    for br in branches})
    return out


def set_results(scored: dict[str, ScoredSet], n_boot: int = 2000, seed: int = 0,
                levels: tuple[str, ...] = LEVELS) -> list[SetResult]:
    """AUC with a 95% video-resampling bootstrap interval per set, branch and level."""
    out = []
    for name, rows in scored.items():
        video_labels = dict(zip(rows.keys, rows.labels.tolist(), strict=True))
        num_fake = sum(video_labels.values())
        auc = {(branch, level): bootstrap_auc(rows.scores[branch], rows.labels, rows.keys,
                                              level=level, n_boot=n_boot, seed=seed)
               for branch in ordered_labels(rows.scores) for level in levels}
        out.append(SetResult(name, len(video_labels) - num_fake, num_fake, auc))
    return out


def results_markdown(results: list[SetResult]) -> str:
    """Markdown table: one row per test set, AUC (%) [95% CI] per branch and level."""
    found = ordered_labels(b for r in results for b, _ in r.auc)
    cols = [(b, lvl) for lvl in LEVELS for b in found]
    head = ["test set", "videos (real/fake)"] + [f"{b} {lvl} AUC" for b, lvl in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.name, f"{r.num_real}/{r.num_fake}"]
        cells += [r.auc[c].format() if c in r.auc else "—" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fold_markdown(score_files: list[Path], sets: list[str] | None = None) -> str:
    """Markdown table of each fold's own frame AUC (%) per test set and branch, and their mean.

    Read beside the pooled table: folds whose scores separate their own videos but sit at
    different levels would show high per-fold AUCs under a low pooled one (a calibration
    effect), while per-fold AUCs near 50 mean no fold separates its test speakers. ``sets``:
    only these set names (default every set)."""
    folds = [read_scores_csv(path) for path in score_files]
    names = sorted({name for fold in folds for name in fold if sets is None or name in sets})
    head = ["test set", "branch", *(f"fold {i}" for i in range(len(folds))), "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        branches = ordered_labels(b for fold in folds if name in fold for b in fold[name].scores)
        for branch in branches:
            aucs = [weighted_auc(fold[name].scores[branch], fold[name].labels)
                    if name in fold and branch in fold[name].scores else float("nan")
                    for fold in folds]
            cells = ["—" if np.isnan(a) else f"{100 * a:.1f}" for a in aucs]
            mean = np.nanmean(aucs) if not np.all(np.isnan(aucs)) else float("nan")
            lines.append(f"| {name} | {branch} | " + " | ".join(cells)
                         + f" | {'—' if np.isnan(mean) else f'{100 * mean:.1f}'} |")
    return "\n".join(lines)


def _video_means(rows: ScoredSet, branch: str) -> tuple[dict[str, float], dict[str, int]]:
    """Mean frame score and label of each video of a set."""
    keys = np.asarray(rows.keys)
    order = list(dict.fromkeys(rows.keys))
    means = {k: float(np.mean(rows.scores[branch][keys == k])) for k in order}
    labels = dict(zip(rows.keys, rows.labels.tolist(), strict=True))
    return means, labels


def paired_markdown(scored: dict[str, ScoredSet]) -> str:
    """Markdown table, per pooled test set and branch: how many fake videos score above their
    own target real (FF++ pairing, :func:`~data_modules.indexes.ffpp.target_real_key`; video
    means), the mean of fake minus own real, and the range of the real videos' scores.

    Read beside the pooled AUC: fakes above their own real with a low pooled AUC mean the
    branch sees the manipulation but the real videos of different speakers sit at different
    levels (an identity or brightness offset, not a missed artifact)."""
    from data_modules.indexes.ffpp import target_real_key

    head = ["test set", "branch", "fakes above own real", "mean fake − own real",
            "real video scores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in scored.items():
        for branch in ordered_labels(rows.scores):
            means, labels = _video_means(rows, branch)
            reals = [v for k, v in means.items() if labels[k] == 0]
            margins = [v - means[t] for k, v in means.items()
                       if labels[k] == 1 and (t := target_real_key(k)) in means]
            if not reals or not margins:
                continue
            above = sum(m > 0 for m in margins)
            lines.append(f"| {name} | {branch} | {above}/{len(margins)} | {np.mean(margins):+.2f} "
                         f"| {min(reals):.2f}–{max(reals):.2f} |")
    return "\n".join(lines)


def write_results_csv(results: list[SetResult], path: Path) -> Path:
    """Long-format CSV: test set, branch, level, auc, ci_low, ci_high, videos per class
    (written atomically)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["test_set", "branch", "level", "auc", "ci_low", "ci_high",
                         "num_real_videos", "num_fake_videos"])
        for r in results:
            for (branch, level), iv in r.auc.items():
                writer.writerow([r.name, branch, level, f"{iv.value:.4f}", f"{iv.low:.4f}",
                                 f"{iv.high:.4f}", r.num_real, r.num_fake])
    return path


def log_wandb_summary(results: list[SetResult], run_dir: Path, name: str, config: dict,
                      images: dict[str, np.ndarray] | None = None) -> Path | None:
    """One W&B run (offline unless logged in; ``WANDB_MODE`` honoured) holding the pooled table,
    each AUC with its interval as summary values and ``images`` (key -> RGB uint8 array, e.g.
    the sensitivity plot). Returns the run folder."""
    import wandb  # heavy: imported when a summary is written

    from deepfakemae.loggers import wandb_mode

    mode = wandb_mode()
    if mode == "disabled":
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project="deepfakemae", name=name, group=name, job_type="cv-summary",
                     dir=str(run_dir), mode=mode, config=config, reinit="finish_previous")
    table = wandb.Table(columns=["test_set", "branch", "level", "auc", "ci_low", "ci_high",
                                 "num_real_videos", "num_fake_videos"])
    for r in results:
        for (branch, level), iv in r.auc.items():
            table.add_data(r.name, branch, level, iv.value, iv.low, iv.high, r.num_real,
                           r.num_fake)
            run.summary[f"{r.name}/{branch}/{level}_auc"] = iv.value
            run.summary[f"{r.name}/{branch}/{level}_auc_ci"] = [iv.low, iv.high]
    run.log({"cv/results": table,
             **{key: wandb.Image(image) for key, image in (images or {}).items()}})
    folder = Path(run.dir).parent
    run.finish()
    return folder


# ------------------------------------------------------------------------- sensitivity curves
def strength_groups(results: list[SetResult]) -> dict[str, dict[int, SetResult]]:
    """Test sets grouped by base method, then artifact strength (``FaceSwapWarp@s3`` -> method
    ``FaceSwapWarp``, strength 3; a plain name is strength 0); methods and strengths sorted.
    Names that are not a method at a strength (``<Method>@s<k>`` with an unknown method or
    level) raise :class:`ValueError` (from `split_strength`)."""
    groups: dict[str, dict[int, SetResult]] = {}
    for r in results:
        method, strength = split_strength(r.name)
        groups.setdefault(method, {})[strength] = r
    return {m: dict(sorted(groups[m].items())) for m in sorted(groups)}


def sensitivity_markdown(results: list[SetResult], branch: str = FUSED,
                         level: str = "video") -> str:
    """Markdown table: one row per method, one column per artifact strength, ``branch``'s
    ``level`` AUC % [95% CI] in each cell (``—`` where a method lacks that strength)."""
    groups = strength_groups(results)
    strengths = sorted({k for levels in groups.values() for k in levels})
    head = ["method", *(f"strength {k}" for k in strengths), "videos (real/fake) per cell"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, levels in groups.items():
        cells = [levels[k].auc[(branch, level)].format()
                 if k in levels and (branch, level) in levels[k].auc else "—" for k in strengths]
        sizes = sorted({f"{r.num_real}/{r.num_fake}" for r in levels.values()})
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {', '.join(sizes)} |")
    return "\n".join(lines)


def write_sensitivity_csv(results: list[SetResult], path: Path) -> Path:
    """Long-format CSV of the curve: method, strength, test set, branch, level, auc, ci_low,
    ci_high, videos per class; rows by method, strength, branch, level."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "strength", "test_set", "branch", "level", "auc", "ci_low",
                         "ci_high", "num_real_videos", "num_fake_videos"])
        for method, levels in strength_groups(results).items():
            for strength, r in levels.items():
                for branch in ordered_labels(b for b, _ in r.auc):
                    for level in LEVELS:
                        if (branch, level) not in r.auc:
                            continue
                        iv = r.auc[(branch, level)]
                        writer.writerow([method, strength, r.name, branch, level,
                                         f"{iv.value:.4f}", f"{iv.low:.4f}", f"{iv.high:.4f}",
                                         r.num_real, r.num_fake])
    return path


def sensitivity_curves(results: list[SetResult], level: str = "video"
                       ) -> dict[str, dict[str, list[tuple[int, Interval]]]]:
    """``{branch: {method: [(strength, AUC interval), ...]}}`` at ``level``, branches in display
    order (fused first), strengths ascending: what `sensitivity_figure` draws."""
    groups = strength_groups(results)
    branches = ordered_labels(b for r in results for b, lvl in r.auc if lvl == level)
    return {b: {m: [(k, r.auc[(b, level)]) for k, r in levels.items() if (b, level) in r.auc]
                for m, levels in groups.items()} for b in branches}


def write_sensitivity_plot(results: list[SetResult], path: Path, title: str = "",
                           level: str = "video") -> np.ndarray:
    """``path`` (PNG, written atomically): AUC against artifact strength per method with the
    95% intervals as bands, one panel per branch (fused first). Returns the RGB image."""
    image = sensitivity_figure(sensitivity_curves(results, level), f"{level} AUC %", title)
    atomic_write(path, lambda h: h.write(png_bytes(image)))
    return image
