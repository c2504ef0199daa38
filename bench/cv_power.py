"""How strong a detector the cross-validated demo table can certify (statistics, not speed).

For a true AUC ``a`` the script draws ``--sims`` test sets of ``--videos`` real and ``--videos``
fake video scores from a binormal model (real ~ N(0, 1), fake ~ N(d, 1) with
Φ(d/√2) = a), gives each the table's 95 % percentile interval (videos resampled with
replacement per class, as ``deepfakemae.metrics.bootstrap_auc`` does at video level, here
vectorised; the script checks that both agree on its first test set) and prints the median lower bound and the share of test sets whose lower bound is
above 0.5 — the "lower bound above 0.5" target of the demo.

    python bench/cv_power.py                   # 10 real / 10 fake videos: the pooled 5-fold table
    python bench/cv_power.py --videos 2        # one fold of the demo on its own
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.stats import norm

from deepfakemae.metrics import bootstrap_auc


def bootstrap_low(real: np.ndarray, fake: np.ndarray, n_boot: int, rng: np.random.Generator
                  ) -> float:
    """2.5 % quantile of the video AUC over ``n_boot`` per-class resamples of the videos."""
    wins = (fake[None, :] > real[:, None]) + 0.5 * (fake[None, :] == real[:, None])  # (R, F)
    w_real = np.apply_along_axis(np.bincount, 1, rng.integers(0, len(real), (n_boot, len(real))),
                                 minlength=len(real))  # (B, R) draw counts
    w_fake = np.apply_along_axis(np.bincount, 1, rng.integers(0, len(fake), (n_boot, len(fake))),
                                 minlength=len(fake))  # (B, F)
    aucs = np.einsum("br,rf,bf->b", w_real, wins, w_fake) / (len(real) * len(fake))
    return float(np.quantile(aucs, 0.025))


def lower_bounds(auc: float, videos: int, sims: int, n_boot: int, seed: int) -> np.ndarray:
    """95 % lower bounds of ``sims`` simulated test sets whose true video AUC is ``auc``."""
    shift = math.sqrt(2.0) * norm.ppf(auc)
    rng = np.random.default_rng(seed)
    out = np.empty(sims)
    for s in range(sims):
        real, fake = rng.normal(size=videos), rng.normal(size=videos) + shift
        out[s] = bootstrap_low(real, fake, n_boot, rng)
    return out


def check_against_table(videos: int, n_boot: int, seed: int) -> float:
    """|difference| between this script's lower bound and ``bootstrap_auc``'s on one test set."""
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=videos), rng.normal(size=videos) + 1.0
    ours = bootstrap_low(real, fake, n_boot, rng)
    labels = np.repeat([0, 1], videos)
    keys = [f"v{i}" for i in range(2 * videos)]
    table = bootstrap_auc(np.concatenate([real, fake]), labels, keys, "video", n_boot=n_boot).low
    return abs(ours - table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10, help="real (= fake) videos per test set")
    parser.add_argument("--aucs", default="0.6,0.7,0.75,0.8,0.85,0.9,0.95")
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    aucs = [float(a) for a in args.aucs.split(",")]
    if args.videos < 1 or not all(0.0 < a <= 1.0 for a in aucs):
        parser.error(f"--videos must be >= 1 and every --aucs value in (0, 1], got "
                     f"--videos {args.videos} --aucs {args.aucs}")
    print(f"{args.videos} real + {args.videos} fake videos, {args.sims} simulated test sets, "
          f"{args.n_boot} bootstrap resamples each")
    print(f"check: lower bound differs from bootstrap_auc's by "
          f"{check_against_table(args.videos, args.n_boot, args.seed):.3f} (resampling noise)")
    print("| true AUC | median 95 % lower bound | share with lower bound > 0.5 |")
    print("|---|---|---|")
    for auc in aucs:
        low = lower_bounds(auc, args.videos, args.sims, args.n_boot, args.seed)
        print(f"| {auc:.2f} | {np.median(low):.2f} | {np.mean(low > 0.5):.0%} |", flush=True)


if __name__ == "__main__":
    main()
