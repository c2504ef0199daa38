"""Artifact strengths of the demo's fakes: named levels of the cues real generators leave.

Each level sets three knobs (:class:`Artifacts`) that :func:`swap_at` / :func:`self_blend_at`
apply to a video's drawn parameters, so a method at strength ``k`` is the strength-0 fake of the
same pair and frames with more artifacts; level 0 returns the parameters unchanged (today's
method, bit for bit). The levels grow monotonically in all three knobs; their values and reasons
are in docs/DESIGN.md ("Artifact strengths of the demo set").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from deepfakemae.synth.methods import DEMO_STRENGTHS
from deepfakemae.synth.swap import SelfBlendParams, SwapParams


@dataclass(frozen=True)
class Artifacts:
    """The knobs of one strength level (1, 1, 1 = no added artifact).

    ``render_scale``: generator resolution, the face rendered at this fraction of its size and
    resampled back. ``feather_scale``: blend boundary, the video's feather width times this
    (0 = a hard edge). ``color_match``: colour transfer, 1 = matched to the target, 0 =
    unmatched (a self-blend, whose colours are jittered rather than transferred, gets its
    colour jitter times ``1 + 2 * (1 - color_match)``).
    """

    render_scale: float = 1.0
    feather_scale: float = 1.0
    color_match: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not 0.0 <= value <= 1.0 or (field.name == "render_scale" and value == 0.0):
                raise ValueError(f"Artifacts.{field.name} must be in [0, 1] (render_scale > 0), "
                                 f"got {value}")

    @property
    def color_gain(self) -> float:
        """Factor on a self-blend's colour jitter: 1 (matched) .. 3 (unmatched)."""
        return 1.0 + 2.0 * (1.0 - self.color_match)


#: strength -> knobs; 0 = today's demo method, 3 = the strongest (see docs/DESIGN.md)
LEVELS: dict[int, Artifacts] = {
    0: Artifacts(),
    1: Artifacts(render_scale=1 / 2, feather_scale=1 / 2, color_match=2 / 3),
    2: Artifacts(render_scale=1 / 3, feather_scale=1 / 4, color_match=1 / 3),
    3: Artifacts(render_scale=1 / 4, feather_scale=0.0, color_match=0.0),
}
if tuple(LEVELS) != DEMO_STRENGTHS:  # the names (methods.py) and the knobs must agree
    raise ImportError(f"strengths.LEVELS {tuple(LEVELS)} != methods.DEMO_STRENGTHS {DEMO_STRENGTHS}")


def level(strength: int) -> Artifacts:
    """The knobs of ``strength``; :class:`ValueError` naming the known ones otherwise."""
    if strength not in LEVELS:
        raise ValueError(f"unknown artifact strength {strength!r}; choose from {tuple(LEVELS)}")
    return LEVELS[strength]


def swap_at(params: SwapParams, artifacts: Artifacts) -> SwapParams:
    """``params`` of :func:`~deepfakemae.synth.swap.swap_region` with ``artifacts`` applied."""
    if artifacts == Artifacts():
        return params
    return dataclasses.replace(params, feather=params.feather * artifacts.feather_scale,
                               color_match=params.color_match * artifacts.color_match,
                               render_scale=params.render_scale * artifacts.render_scale)


def self_blend_at(params: SelfBlendParams, artifacts: Artifacts) -> SelfBlendParams:
    """``params`` of :func:`~deepfakemae.synth.swap.self_blend` with ``artifacts`` applied: the
    moved copy shrunk by ``1 / render_scale`` and enlarged back, the feather scaled, and the
    hue, saturation, brightness and contrast changes times :attr:`Artifacts.color_gain`."""
    if artifacts == Artifacts():
        return params
    gain = artifacts.color_gain
    return dataclasses.replace(
        params, feather=params.feather * artifacts.feather_scale,
        downscale=params.downscale / artifacts.render_scale,
        hue=params.hue * gain, saturation=1.0 + (params.saturation - 1.0) * gain,
        brightness=params.brightness * gain, contrast=1.0 + (params.contrast - 1.0) * gain)
