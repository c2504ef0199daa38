"""Self-blended pseudo-fakes (Shiohara & Yamasaki, CVPR 2022) made on the fly from real frames.

Every real training video gets a *virtual* fake twin, ``<real key>#sbi`` with method
``SelfBlendPseudo``: the same cached frames, each turned into a pseudo-fake by
:func:`deepfakemae.synth.swap.self_blend` with Self-Blended-Images settings
(:meth:`SelfBlendParams.sample_sbi`). The twin is a fake (label 1, no label noise) of its own
domain, so samplers, metrics and the Mapping Network's meta-split see it as one more method.
Parameters are drawn from a per-sample seed, once per sample, so every frame of a clip gets the
same blend and a seed always gives the same pixels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from deepfakemae.records import FAKE, REAL, REAL_METHOD
from deepfakemae.synth.swap import SelfBlendParams, self_blend

PSEUDO_METHOD = "SelfBlendPseudo"
PSEUDO_SUFFIX = "#sbi"
FakeSource = Literal["dataset", "pseudo", "both"]
FAKE_SOURCES = ("dataset", "pseudo", "both")


def pseudo_key(real_key: str) -> str:
    """The key of a real video's pseudo-fake twin."""
    return real_key + PSEUDO_SUFFIX


def pseudo_fake_videos(videos: list, fake_source: FakeSource) -> list:
    """Training ``VideoItem``s for ``fake_source``: ``dataset`` keeps them as they are, ``pseudo``
    replaces the dataset fakes by one pseudo-fake twin per real video, ``both`` adds the twins."""
    if fake_source not in FAKE_SOURCES:
        raise ValueError(f"fake_source must be one of {FAKE_SOURCES}, got {fake_source!r}")
    if fake_source == "dataset":
        return list(videos)
    reals = [v for v in videos if v.label == REAL and v.method == REAL_METHOD]
    twins = [replace(v, key=pseudo_key(v.key), label=FAKE, method=PSEUDO_METHOD, pseudo_of=v.key)
             for v in reals]
    kept = videos if fake_source == "both" else [v for v in videos if v.label == REAL]
    return [*kept, *twins]


def make_pseudo_fake(crops: np.ndarray, landmarks: np.ndarray, seed: int) -> np.ndarray:
    """Self-blend every frame of a real clip with one parameter draw from ``seed``.

    ``crops`` (T,H,W,3) uint8 RGB, ``landmarks`` (T,68,2) crop px -> (T,H,W,3) uint8.
    """
    params = SelfBlendParams.sample_sbi(np.random.default_rng(seed))
    return np.stack([self_blend(c, p, params) for c, p in zip(crops, landmarks, strict=True)])
