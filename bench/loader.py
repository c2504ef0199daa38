"""Loader throughput per worker: training images/s with and without pseudo-fakes.

One process, one thread (what one DataLoader worker does): the balanced training dataset of
``DeepfakeDataModule`` is read sample by sample in its sampler's order, with the default training
augmentation, for ``fake_source: dataset`` (the cache's fakes) and ``pseudo`` with each pseudo
method (``self_blend``, ``blend_swap``: every fake a pseudo-fake made on the fly). The runs
alternate in rounds so that all see the same machine load. Besides the loader figure, each
pseudo run reports its pseudo-fake samples alone against the real samples read in the same run
(the cost of the blend itself).

    python bench/loader.py --cache data/demo/cache               # the demo cache (112 px -> 224)
    python bench/loader.py --cache data/cache/ffpp_c23 --split train --rounds 5 --samples 400
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from data_modules import DeepfakeDataModule, SourceSpec

#: row label -> (fake_source, pseudo_methods)
SOURCES = {"dataset": ("dataset", None), "pseudo self_blend": ("pseudo", ["self_blend"]),
           "pseudo blend_swap": ("pseudo", ["blend_swap"])}


def build_dataset(cache: str, split: str, size: int, source: str, mode: str):
    """The training dataset and its balanced sampler order for a ``SOURCES`` row."""
    fake_source, methods = SOURCES[source]
    dm = DeepfakeDataModule(train=[SourceSpec("bench", cache, split=split)], img_size=size,
                            augment=True, balanced=True, fake_source=fake_source,
                            pseudo_methods=methods, mode=mode)
    dm.setup("fit")
    sampler = dm.train_sampler()
    return dm.train_dataset, list(sampler)


def time_samples(dataset, order: list[int], count: int) -> dict[str, list[float]]:
    """Seconds per sample, grouped into ``all``, ``pseudo`` (twins) and ``real``."""
    times: dict[str, list[float]] = {"all": [], "pseudo": [], "real": []}
    frames = dataset.clip_len
    for index in (order * (count // max(len(order), 1) + 1))[:count]:
        video = dataset.videos[int(dataset.video_of[index])]
        t0 = time.perf_counter()
        dataset[index]
        seconds = (time.perf_counter() - t0) / frames  # per image
        times["all"].append(seconds)
        if video.pseudo_of is not None:
            times["pseudo"].append(seconds)
        elif video.label == 0:
            times["real"].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default="data/demo/cache", help="a face cache with reals and fakes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--mode", choices=("frame", "clip"), default="frame")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200, help="samples per source per round")
    args = parser.parse_args()
    if not (Path(args.cache) / "manifest.jsonl").exists():
        raise SystemExit(f"bench/loader.py: no face cache at {args.cache}; build one with "
                         "`deepfakemae demo-data` + `deepfakemae preprocess` or pass --cache")
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.manual_seed(0)
    sources = {s: build_dataset(args.cache, args.split, args.size, s, args.mode)
               for s in SOURCES}
    totals = {s: {"all": [], "pseudo": [], "real": []} for s in sources}
    for dataset, order in sources.values():  # warm-up: JPEG decoder, caches
        time_samples(dataset, order, 10)
    for _ in range(args.rounds):
        for source, (dataset, order) in sources.items():
            for kind, values in time_samples(dataset, order, args.samples).items():
                totals[source][kind] += values
    print(f"loader images/s per worker, 1 thread, {args.size} px, {args.mode} samples, "
          f"training augmentation, cache {args.cache}")
    print("| fake source | all samples | real samples | pseudo-fake samples |")
    print("|---|---|---|---|")
    for source, kinds in totals.items():
        cells = [f"{1.0 / np.mean(kinds[k]):.0f}" if kinds[k] else "-"
                 for k in ("all", "real", "pseudo")]
        print(f"| {source} | " + " | ".join(cells) + " |")
    for source in list(SOURCES)[1:]:
        slow = np.mean(totals[source]["all"]) / np.mean(totals["dataset"]["all"])
        blend = np.mean(totals[source]["pseudo"]) / np.mean(totals[source]["real"])
        print(f"{source}: loader time / dataset loader time {slow:.2f}x; a pseudo-fake sample / "
              f"a real sample {blend:.2f}x")


if __name__ == "__main__":
    main()
