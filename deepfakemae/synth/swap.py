"""Landmark-driven face manipulations on single RGB frames (the demo dataset's fake methods).

Every function works on one frame: ``(H,W,3) uint8 RGB`` images and ``(68,2) float`` landmarks in
the iBUG-300W order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67).

- :func:`swap_region` — warp a source face onto a target's geometry (Delaunay triangulation of the
  target landmarks, one affine map per triangle), match its colour to the target in LAB, and
  blend it with a feathered mask restricted to a region: the whole face, the mouth or the eyes.
- :func:`self_blend` — blend a face onto a slightly moved, rescaled and recoloured copy of the
  same frame (boundary and colour artefacts without an identity change). With
  :meth:`SelfBlendParams.sample_sbi` it follows Self-Blended Images (Shiohara & Yamasaki, CVPR
  2022): a deformed, blurred landmark-hull mask, a random blend ratio, colour and frequency
  jitter of the source copy; the training data's pseudo-fakes (``fake_source``) use it.

Randomness lives only in the parameter objects (:class:`SwapParams`, :class:`SelfBlendParams`),
drawn once per video from a seeded generator, so a fake video is deterministic and temporally
steady.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from deepfakemae.faces import ibug68

# region name -> groups of landmark indices; the mask is the union of each group's convex hull.
REGIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "face": (ibug68.JAW + ibug68.BROWS,),
    "mouth": (ibug68.OUTER_LIPS,),
    "eyes": (ibug68.RIGHT_BROW + ibug68.RIGHT_EYE, ibug68.LEFT_BROW + ibug68.LEFT_EYE),
    "inner_mouth": (ibug68.INNER_MOUTH,),  # the mouth opening: always kept from the target
    "eyeballs": (ibug68.RIGHT_EYE, ibug68.LEFT_EYE),  # left out of colour statistics
}
SWAP_REGIONS = ("face", "mouth", "eyes")
#: largest hull deformation and dilation of :meth:`SelfBlendParams.sample_sbi` (face widths):
#: a self-blended pseudo-fake changes no pixel farther than their sum outside the face hull
SBI_MAX_DEFORM = 0.03
SBI_MAX_GROW = 0.04


@dataclass(frozen=True)
class SwapParams:
    """Per-video settings of :func:`swap_region` (lengths are fractions of the face width)."""

    region: str = "face"
    grow: float = -0.03  # mask dilation (> 0) or erosion (< 0) before feathering
    feather: float = 0.04  # Gaussian sigma of the mask edge (0: a hard edge)
    color_match: float = 1.0  # 1: LAB mean/std of the warped source matched to the target; 0: not
    render_scale: float = 1.0  # < 1: the warped face rendered at this fraction of its size

    @classmethod
    def sample(cls, region: str, rng: np.random.Generator) -> SwapParams:
        """Draw settings for ``region`` (``face``, ``mouth`` or ``eyes``)."""
        if region not in SWAP_REGIONS:
            raise ValueError(f"unknown region {region!r}; choose one of {SWAP_REGIONS}")
        if region == "face":  # stay inside the landmark hull, which the warp covers
            grow = float(rng.uniform(-0.05, -0.02))
        else:  # facial parts: include a margin of skin around the part
            grow = float(rng.uniform(0.05, 0.09))
        return cls(region=region, grow=grow, feather=float(rng.uniform(0.025, 0.05)))


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    """A magnitude in [low, high) with a random sign."""
    return float(rng.choice((-1.0, 1.0)) * rng.uniform(low, high))


@dataclass(frozen=True)
class SelfBlendParams:
    """Per-video settings of :func:`self_blend` (lengths are fractions of the face width)."""

    scale: tuple[float, float] = (1.03, 0.98)  # x, y scale of the moved copy about the face centre
    shift: tuple[float, float] = (0.02, -0.01)  # x, y translation of the moved copy
    hue: float = 4.0  # OpenCV hue units (0..180)
    saturation: float = 1.08
    brightness: float = 10.0  # added to every RGB channel
    contrast: float = 1.05
    grow: float = 0.0  # hull dilation (> 0) or erosion (< 0)
    feather: float = 0.04  # Gaussian sigma of the mask edge (0: a hard edge)
    opacity: float = 0.9  # peak alpha of the blended face (SBI's blend ratio)
    deform: float = 0.0  # max displacement of each hull landmark (random, fixed by deform_seed)
    deform_seed: int = 0
    mask_blur: float = 0.0  # extra Gaussian sigma of the alpha after feathering (SBI's 2nd blur)
    downscale: float = 1.0  # > 1: the source copy is shrunk by this factor and enlarged back
    sharpen: float = 0.0  # > 0: unsharp-mask amount on the source copy

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SelfBlendParams:
        """Draw a visible but small transformation; each change has a random sign."""
        return cls(
            scale=(1.0 + _signed(rng, 0.02, 0.05), 1.0 + _signed(rng, 0.02, 0.05)),
            shift=(_signed(rng, 0.01, 0.03), _signed(rng, 0.01, 0.03)),
            hue=_signed(rng, 1.0, 3.0),
            saturation=1.0 + _signed(rng, 0.03, 0.10),
            brightness=_signed(rng, 6.0, 14.0),
            contrast=1.0 + _signed(rng, 0.04, 0.10),
            grow=float(rng.uniform(-0.04, 0.04)),
            feather=float(rng.uniform(0.03, 0.06)),
            opacity=float(rng.uniform(0.75, 1.0)),
        )

    @classmethod
    def sample_sbi(cls, rng: np.random.Generator) -> SelfBlendParams:
        """Draw Self-Blended-Images settings: stronger geometry, deformed and blurred mask,
        blend ratio from SBI's {0.25, 0.5, 0.75, 1, 1, 1}, and at most one frequency change."""
        frequency = int(rng.integers(3))  # 0 none, 1 downscale, 2 sharpen
        return cls(
            scale=(1.0 + _signed(rng, 0.0, 0.05), 1.0 + _signed(rng, 0.0, 0.05)),
            shift=(_signed(rng, 0.0, 0.03), _signed(rng, 0.0, 0.015)),
            hue=_signed(rng, 0.0, 5.0),
            saturation=1.0 + _signed(rng, 0.0, 0.15),
            brightness=_signed(rng, 0.0, 20.0),
            contrast=1.0 + _signed(rng, 0.0, 0.15),
            grow=float(rng.uniform(-0.04, 0.04)),
            feather=float(rng.uniform(0.01, 0.05)),
            opacity=float(rng.choice((0.25, 0.5, 0.75, 1.0, 1.0, 1.0))),
            deform=float(rng.uniform(0.0, SBI_MAX_DEFORM)),
            deform_seed=int(rng.integers(2**31)),
            mask_blur=float(rng.uniform(0.0, 0.03)),
            downscale=float(rng.uniform(1.5, 3.0)) if frequency == 1 else 1.0,
            sharpen=float(rng.uniform(0.3, 1.0)) if frequency == 2 else 0.0,
        )


def face_width(points: np.ndarray) -> float:
    """Distance between the jaw ends (landmarks 0 and 16), at least 1 px."""
    return max(float(np.linalg.norm(points[ibug68.JAW[-1]] - points[ibug68.JAW[0]])), 1.0)


def region_mask(points: np.ndarray, region: str, shape: tuple[int, int],
                grow_px: float = 0.0) -> np.ndarray:
    """Binary mask (H,W) uint8 {0,1} of ``region``'s landmark hulls, grown or shrunk by ``grow_px``."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose one of {tuple(REGIONS)}")
    mask = np.zeros(shape, np.uint8)  # (H, W)
    for group in REGIONS[region]:
        hull = cv2.convexHull(np.round(points[list(group)]).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 1)
    radius = int(round(abs(grow_px)))
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        op = cv2.dilate if grow_px > 0 else cv2.erode
        mask = op(mask, kernel)
    return mask


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles (K,3) int of the landmarks (duplicate points are left out).

    No joggling ("QJ"): qhull's joggle draws from a process-wide random state, which would make
    the triangles depend on earlier calls.
    """
    return Delaunay(np.asarray(points, np.float64)).simplices.astype(np.int64)


def warp_triangles(source: np.ndarray, source_points: np.ndarray, target_points: np.ndarray,
                   triangles: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp of ``source`` so its landmarks land on ``target_points``.

    Returns ``(warped (H,W,3) uint8, covered (H,W) uint8 {0,1})``; pixels outside every target
    triangle are 0 in both.
    """
    height, width = shape
    warped = np.zeros((height, width, 3), np.uint8)  # (H, W, 3)
    covered = np.zeros((height, width), np.uint8)  # (H, W)
    src = np.asarray(source_points, np.float32)
    dst = np.asarray(target_points, np.float32)
    for tri in triangles:
        d = dst[tri]  # (3, 2) target corners
        (ax, ay), (bx, by) = d[1] - d[0], d[2] - d[0]
        area = 0.5 * abs(float(ax * by - ay * bx))
        if area < 0.5:
            continue
        x0, y0 = np.floor(d.min(0)).astype(int)
        x1, y1 = np.ceil(d.max(0)).astype(int) + 1
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        local = d - np.array([x0, y0], np.float32)
        # Map target-patch pixels back to source pixels: valid even when the source is degenerate.
        inverse = cv2.getAffineTransform(local, src[tri])
        patch = cv2.warpAffine(source, inverse, (x1 - x0, y1 - y0),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT_101)
        inside = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(inside, np.round(local).astype(np.int32), 1)
        sel = inside.astype(bool)
        warped[y0:y1, x0:x1][sel] = patch[sel]
        covered[y0:y1, x0:x1][sel] = 1
    return warped, covered


def match_color_lab(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``source``'s LAB mean/std inside ``mask`` to ``target``'s; returns (H,W,3) uint8."""
    sel = mask.astype(bool)
    if sel.sum() < 16:
        return source
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    mu_s, sd_s = src[sel].mean(0), src[sel].std(0) + 1e-3
    mu_t, sd_t = tgt[sel].mean(0), tgt[sel].std(0) + 1e-3
    out = (src - mu_s) * np.clip(sd_t / sd_s, 0.5, 2.0) + mu_t
    return cv2.cvtColor(np.clip(out + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def feathered_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Soft alpha (H,W) float32 in [0,1]: ``mask`` shrunk by ~2 sigma, then Gaussian-blurred.

    Shrinking first keeps the alpha at ~0 on the mask's border, so nothing outside the mask
    (where a warp may have no pixels) leaks in. ``sigma <= 0``: a hard edge, the mask itself;
    ``0 < sigma < 0.5`` is blurred at 0.5 px.
    """
    if sigma <= 0:
        return mask.astype(np.float32)
    sigma = max(float(sigma), 0.5)
    radius = int(round(2 * sigma))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    core = cv2.erode(mask.astype(np.uint8), kernel).astype(np.float32)
    alpha = cv2.GaussianBlur(core, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return alpha * mask.astype(np.float32)


def mix_images(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """``weight * first + (1 - weight) * second`` for (H,W,3) uint8 (weight 1: ``first`` as is)."""
    if weight >= 1.0:
        return first
    out = weight * first.astype(np.float32) + (1.0 - weight) * second.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def face_box(points: np.ndarray, shape: tuple[int, int], margin: float = 0.1) -> np.ndarray:
    """Box ``(x0, y0, x1, y1)`` int of the landmarks, grown by ``margin`` face widths and clipped
    to ``shape`` (H,W)."""
    pad = margin * face_width(points)
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int) + 1
    return np.array([max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])])


def render_at_scale(image: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray:
    """``image`` (H,W,3) uint8 with its ``box`` rendered at ``scale`` of its size and resampled
    back (area shrink, bilinear enlargement): the detail a generator of lower resolution lacks.
    Pixels outside the box are unchanged; ``scale >= 1`` returns ``image``."""
    if scale >= 1.0:
        return image
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        return image
    out = image.copy()
    out[y0:y1, x0:x1] = shrink_and_enlarge(image[y0:y1, x0:x1], 1.0 / scale)
    return out


def shrink_and_enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` (H,W,3) shrunk by ``factor`` (> 1, area) and enlarged back (bilinear)."""
    height, width = image.shape[:2]
    small = (max(int(round(width / factor)), 1), max(int(round(height / factor)), 1))
    return cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA),
                      (width, height), interpolation=cv2.INTER_LINEAR)


def alpha_blend(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha * foreground + (1 - alpha) * background`` for (H,W,3) uint8 and alpha (H,W)."""
    a = alpha[..., None]
    out = a * foreground.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def swap_region(target: np.ndarray, target_points: np.ndarray, source: np.ndarray,
                source_points: np.ndarray, params: SwapParams) -> np.ndarray:
    """Replace ``params.region`` of ``target`` by the same region of ``source``.

    The source face is warped onto the target's landmark geometry, colour-matched to the target
    (LAB statistics over the skin of the face: the face hull without eyeballs and mouth opening;
    ``color_match`` < 1 mixes in the unmatched colours), rendered at ``render_scale`` of the
    face's size (the warped face over the target, in the landmarks' box; 1 = as is), and
    feather-blended inside the grown region mask; pixels outside it are unchanged. The
    target's mouth opening (teeth, tongue) is kept: a closed source mouth has no pixels for it.
    ``target``/``source`` (H,W,3) uint8 RGB (sizes may differ), points (68,2). Returns (H,W,3).
    """
    shape = target.shape[:2]
    width = face_width(target_points)
    warped, covered = warp_triangles(source, source_points, target_points,
                                     triangulate(target_points), shape)
    mask = region_mask(target_points, params.region, shape, params.grow * width) & covered
    if params.color_match > 0.0:
        skin = region_mask(target_points, "face", shape, -0.05 * width) & covered
        skin &= 1 - region_mask(target_points, "eyeballs", shape, 0.02 * width)
        skin &= 1 - region_mask(target_points, "inner_mouth", shape, 0.02 * width)
        warped = mix_images(match_color_lab(warped, target, skin), warped, params.color_match)
    if params.render_scale < 1.0:  # a generator's output: the whole face box, target around it
        rendered = np.where(covered[..., None].astype(bool), warped, target)
        warped = render_at_scale(rendered, face_box(target_points, shape), params.render_scale)
    opening = region_mask(target_points, "inner_mouth", shape).astype(np.float32)
    opening = cv2.GaussianBlur(opening, (0, 0), sigmaX=1.0)
    alpha = feathered_alpha(mask, params.feather * width) * (1.0 - opening)
    return alpha_blend(warped, target, alpha)


def _jitter_colors(image: np.ndarray, params: SelfBlendParams) -> np.ndarray:
    """Hue/saturation shift, then contrast and brightness change; (H,W,3) uint8 RGB.

    Each step maps a uint8 value to a uint8 value, so it runs as a lookup table.
    """
    values = np.arange(256, dtype=np.float32)
    hue = np.clip(np.mod(values + params.hue, 180.0) + 0.5, 0, 255).astype(np.uint8)
    sat = np.clip(np.clip(values * params.saturation, 0, 255) + 0.5, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    tables = (hue, sat, values.astype(np.uint8))
    hsv = cv2.merge([cv2.LUT(c, t) for c, t in zip(cv2.split(hsv), tables, strict=True)])
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    tone = np.clip((values - 128.0) * params.contrast + 128.0 + params.brightness + 0.5, 0, 255)
    return cv2.LUT(rgb, tone.astype(np.uint8))


def _frequency_jitter(image: np.ndarray, params: SelfBlendParams) -> np.ndarray:
    """Down-and-up resampling (removes high frequencies) or unsharp masking (boosts them)."""
    if params.downscale > 1.0:
        image = shrink_and_enlarge(image, params.downscale)
    if params.sharpen > 0.0:
        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=1.0)
        image = cv2.addWeighted(image, 1.0 + params.sharpen, blurred, -params.sharpen, 0.0)
    return image


def self_blend_alpha(points: np.ndarray, shape: tuple[int, int],
                     params: SelfBlendParams) -> np.ndarray:
    """Alpha (H,W) float32 in [0, opacity] of :func:`self_blend`: the face hull (jaw + brows),
    its landmarks moved by up to ``deform`` face widths, grown by ``grow``, feathered, blurred
    by ``mask_blur`` and kept inside the grown, deformed hull."""
    fw = face_width(points)
    if params.deform > 0.0:
        offsets = np.random.default_rng(params.deform_seed).uniform(-1.0, 1.0, points.shape)
        points = points + offsets * params.deform * fw  # (68, 2)
    mask = region_mask(points, "face", shape, params.grow * fw)
    alpha = feathered_alpha(mask, params.feather * fw)
    if params.mask_blur > 0.0:
        sigma = params.mask_blur * fw
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma) * mask
    return alpha * params.opacity


def self_blend(frame: np.ndarray, points: np.ndarray, params: SelfBlendParams) -> np.ndarray:
    """Blend a transformed copy of ``frame`` back onto itself inside the face hull.

    The copy is recoloured, frequency-jittered and scaled/shifted about the landmark centroid;
    it enters through :func:`self_blend_alpha`. (H,W,3) uint8 RGB, points (68,2) -> (H,W,3).
    """
    height, width = frame.shape[:2]
    fw = face_width(points)
    cx, cy = points.mean(0)
    sx, sy = params.scale
    matrix = np.array([[sx, 0.0, (1 - sx) * cx + params.shift[0] * fw],
                       [0.0, sy, (1 - sy) * cy + params.shift[1] * fw]], np.float32)
    source = _frequency_jitter(_jitter_colors(frame, params), params)
    moved = cv2.warpAffine(source, matrix, (width, height),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    alpha = self_blend_alpha(points, (height, width), params)
    ys, xs = np.nonzero(alpha.any(1))[0], np.nonzero(alpha.any(0))[0]
    out = frame.copy()
    if len(ys):  # blend only the box where alpha > 0: outside it the frame stays as it is
        box = np.s_[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
        out[box] = alpha_blend(moved[box], frame[box], alpha[box])
    return out
