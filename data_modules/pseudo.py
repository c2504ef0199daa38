"""Pseudo-fakes made on the fly from real training frames.

Every real training video gets one *virtual* fake twin per pseudo method: the same cached
frames, each turned into a pseudo-fake when it is read. Two methods:

- ``self_blend`` (``<real key>#sbi``, method ``SelfBlendPseudo``): Self-Blended Images (Shiohara
  & Yamasaki, CVPR 2022), :func:`deepfakemae.synth.swap.self_blend` with
  :meth:`SelfBlendParams.sample_sbi` settings; no identity change.
- ``blend_swap`` (``<real key>#swap``, method ``BlendSwapPseudo``): a region (face, mouth or
  eyes) of *another* real training video, warped onto this one's landmarks, colour-matched and
  feather-blended (:func:`deepfakemae.synth.swap.swap_region`), in the spirit of Face X-ray's
  blended images (Li et al., CVPR 2020): a new identity pair and new blend settings per sample.

A twin is a fake (label 1, no label noise) of its own domain, so samplers, metrics and the
Mapping Network's meta-split see it as one more method. Parameters are drawn from a per-sample
seed, once per sample, so every frame of a clip gets the same blend and a seed always gives the
same pixels.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from deepfakemae.records import FAKE, REAL, REAL_METHOD
from deepfakemae.synth.swap import (
    SWAP_REGIONS,
    SelfBlendParams,
    SwapParams,
    self_blend,
    swap_region,
)

FakeSource = Literal["dataset", "pseudo", "both"]
FAKE_SOURCES = ("dataset", "pseudo", "both")
PseudoMethod = Literal["self_blend", "blend_swap"]
#: pseudo method -> (the twin's method name, its key suffix)
PSEUDO_METHODS: dict[str, tuple[str, str]] = {
    "self_blend": ("SelfBlendPseudo", "#sbi"),
    "blend_swap": ("BlendSwapPseudo", "#swap"),
}
#: the twins' method names that need a second (donor) real video
DONOR_METHODS = frozenset({"BlendSwapPseudo"})


def pseudo_key(real_key: str, method: PseudoMethod = "self_blend") -> str:
    """The key of a real video's pseudo-fake twin made by ``method``."""
    return real_key + PSEUDO_METHODS[method][1]


def pseudo_fake_videos(videos: list, fake_source: FakeSource,
                       methods: tuple[str, ...] | list[str] = ("self_blend",)) -> list:
    """Training ``VideoItem``s for ``fake_source``: ``dataset`` keeps them as they are, ``pseudo``
    replaces the dataset fakes by one twin per real video and pseudo method, ``both`` adds the
    twins."""
    if fake_source not in FAKE_SOURCES:
        raise ValueError(f"fake_source must be one of {FAKE_SOURCES}, got {fake_source!r}")
    unknown = sorted(set(methods) - set(PSEUDO_METHODS))
    if unknown or not methods:
        raise ValueError(f"pseudo methods must be a non-empty list of {list(PSEUDO_METHODS)}, "
                         f"got {list(methods)}")
    if fake_source == "dataset":
        return list(videos)
    reals = [v for v in videos if v.label == REAL and v.method == REAL_METHOD]
    if "blend_swap" in methods and len(reals) < 2:
        raise ValueError(f"blend_swap pseudo-fakes need at least two real training videos (a "
                         f"donor besides the target), got {len(reals)}; add real videos or drop "
                         f"blend_swap from --data.init_args.pseudo_methods")
    twins = [replace(v, key=pseudo_key(v.key, m), label=FAKE, method=PSEUDO_METHODS[m][0],
                     pseudo_of=v.key)
             for m in dict.fromkeys(methods) for v in reals]
    kept = videos if fake_source == "both" else [v for v in videos if v.label == REAL]
    return [*kept, *twins]


def make_pseudo_fake(crops: np.ndarray, landmarks: np.ndarray, seed: int) -> np.ndarray:
    """Self-blend every frame of a real clip with one parameter draw from ``seed``.

    ``crops`` (T,H,W,3) uint8 RGB, ``landmarks`` (T,68,2) crop px -> (T,H,W,3) uint8.
    """
    params = SelfBlendParams.sample_sbi(np.random.default_rng(seed))
    return np.stack([self_blend(c, p, params) for c, p in zip(crops, landmarks, strict=True)])


def make_blend_swap(crops: np.ndarray, landmarks: np.ndarray, donor_crops: np.ndarray,
                    donor_landmarks: np.ndarray, seed: int) -> np.ndarray:
    """Blend one region of a donor clip into every frame of a real clip (one draw from ``seed``).

    ``crops``/``donor_crops`` (T,H,W,3) uint8 RGB, landmarks (T,68,2) crop px, frame t of the
    donor goes into frame t -> (T,H,W,3) uint8.
    """
    rng = np.random.default_rng(seed)
    params = SwapParams.sample(str(rng.choice(SWAP_REGIONS)), rng)
    return np.stack([swap_region(c, p, dc, dp, params) for c, p, dc, dp in
                     zip(crops, landmarks, donor_crops, donor_landmarks, strict=True)])
