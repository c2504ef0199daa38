"""Facial-part masking for stage 1 (paper §3.1, Algorithm 1, §4.4).

Landmarks → three patch sets (eyes, cheek & nose, lips) → a boolean patch mask (True = masked).

Conventions
-----------
* Landmarks are (B, 68, 2) float ``(x, y)`` in crop pixels, dlib/iBUG 68-point order, 0-based:
  jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
* Patches are in raster order: token ``l`` covers row ``l // g`` and column ``l % g`` of the
  ``g × g`` grid, ``g = img_size // patch_size`` (14 × 14 = 196 for the paper's 224/16).
* Part index: ``0`` eyes, ``1`` cheek & nose, ``2`` lips (``PART_NAMES``).
* The masking ratio is relative to the selected part, as §4.4 defines it: ``ratio = 0.5`` masks
  half of that part's patches. The count is ``floor(ratio * |set| + 0.5)`` (round half up), at
  least 1 and at most ``|set|``. The ``random`` strategy (MAE's RP, Table 5) applies the ratio to
  all ``L`` patches instead and keeps at least one patch visible.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, get_args

import torch

from deepfakemae.faces import ibug68

PART_NAMES: tuple[str, str, str] = ("eyes", "cheek_nose", "lips")
#: masking strategies (Table 5): a random part per sample, one fixed part, or MAE's random patches
MaskStrategy = Literal["facial_part", "eyes", "cheek_nose", "lips", "random"]
#: readings of Algorithm 1's part boundaries (``part_sets``)
PartVariant = Literal["algorithm1", "region", "literal"]
STRATEGIES: tuple[str, ...] = get_args(MaskStrategy)
VARIANTS: tuple[str, ...] = get_args(PartVariant)


def template_landmarks(img_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Mean-face landmarks for a square crop of ``img_size`` pixels. Returns (68, 2) float32."""
    return torch.tensor(ibug68.MEAN_FACE, dtype=torch.float32, device=device) * img_size


def synthetic_landmarks(
    batch_size: int,
    img_size: int,
    generator: torch.Generator | None = None,
    max_rotation_deg: float = 10.0,
    max_scale: float = 0.1,
    max_shift: float = 0.05,
    point_noise: float = 0.01,
) -> torch.Tensor:
    """Plausible face landmarks: the mean face under a random similarity transform plus noise.

    Rotation ±``max_rotation_deg``, scale 1 ± ``max_scale``, shift ± ``max_shift`` · size,
    per-point Gaussian noise of ``point_noise`` · size. For benchmarks and tests. Returns (B, 68, 2).
    """
    tpl = template_landmarks(img_size) - img_size / 2  # (68, 2) centred
    u = torch.rand(batch_size, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle = u[:, 0] * math.radians(max_rotation_deg)
    scale = 1 + u[:, 1] * max_scale
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    pts = torch.einsum("bij,nj->bni", rot, tpl)  # (B, 68, 2)
    pts = pts + img_size / 2 + u[:, None, 2:] * max_shift * img_size
    noise = torch.randn(batch_size, ibug68.NUM_POINTS, 2, generator=generator)
    noise = noise * point_noise * img_size
    return pts + noise


def _grid(img_size: int, patch_size: int) -> int:
    if img_size % patch_size:
        raise ValueError(
            f"deepfakemae/masking.py: img_size {img_size} is not a multiple of patch_size {patch_size}"
        )
    g = img_size // patch_size
    if g < 3:
        raise ValueError(
            f"deepfakemae/masking.py: a {g}x{g} patch grid cannot hold three facial parts; "
            "use img_size >= 3 * patch_size"
        )
    return g


def sanitize_landmarks(landmarks: torch.Tensor, img_size: int, patch_size: int) -> torch.Tensor:
    """Replace degenerate samples by the mean-face template.

    A sample is degenerate when any coordinate is non-finite, or its landmark bounding box is
    narrower or shorter than one patch (e.g. all-zero landmarks from a failed detection).
    Returns (B, 68, 2) float32.
    """
    if landmarks.ndim != 3 or landmarks.shape[1:] != (ibug68.NUM_POINTS, 2):
        raise ValueError(
            f"deepfakemae/masking.py: landmarks must be (B, 68, 2), got {tuple(landmarks.shape)}"
        )
    lm = landmarks.float()
    finite = torch.isfinite(lm).flatten(1).all(1)  # (B,)
    safe = torch.where(torch.isfinite(lm), lm, torch.zeros_like(lm))
    extent = safe.amax(1) - safe.amin(1)  # (B, 2)
    ok = finite & (extent >= patch_size).all(1)  # (B,)
    tpl = template_landmarks(img_size, lm.device).expand_as(lm)
    return torch.where(ok[:, None, None], safe, tpl)


def _algorithm1_sets(lm: torch.Tensor, g: int, patch_size: int) -> torch.Tensor:
    """Horizontal bands of Algorithm 1. lm: (B, 68, 2) sanitised. Returns (B, 3, L)."""
    rows = torch.arange(g * g, device=lm.device) // g  # (L,) patch row of each token
    eye_bottom = lm[:, ibug68.EYES, 1].amax(1)  # (B,) lowest eye-contour point (lower eyelids)
    nose_base = lm[:, ibug68.NOSE_BASE, 1]  # (B,) subnasale
    r_eye = torch.floor(eye_bottom / patch_size).long().clamp(0, g - 3)  # (B,)
    r_nose = torch.floor(nose_base / patch_size).long()
    r_nose = torch.maximum(r_nose, r_eye + 1).clamp(max=g - 2)  # (B,)
    eyes = rows[None] <= r_eye[:, None]  # (B, L)
    lips = rows[None] > r_nose[:, None]
    cheek = ~eyes & ~lips
    return torch.stack([eyes, cheek, lips], 1)


#: Algorithm 1 read literally: the "17th" and "16th" landmarks, 1-based (0-based 16 and 15)
LITERAL_EYES_END, LITERAL_CHEEK_END = 16, 15


def _literal_sets(lm: torch.Tensor, g: int, patch_size: int) -> torch.Tensor:
    """Raster-index runs of Algorithm 1 read literally. lm: (B, 68, 2). Returns (B, 3, L)."""
    L = g * g
    idx = torch.arange(L, device=lm.device)  # (L,)
    cell = torch.floor(lm[:, [LITERAL_EYES_END, LITERAL_CHEEK_END]] / patch_size).long()
    cell = cell.clamp(0, g - 1)  # (B, 2, 2) column, row of each landmark's patch
    raster = cell[..., 1] * g + cell[..., 0]  # (B, 2)
    end_eyes = raster[:, 0].clamp(0, L - 3)  # (B,)
    end_cheek = torch.maximum(raster[:, 1], end_eyes + 1).clamp(max=L - 2)  # (B,)
    eyes = idx[None] <= end_eyes[:, None]  # (B, L)
    lips = idx[None] > end_cheek[:, None]
    return torch.stack([eyes, ~eyes & ~lips, lips], 1)


def _boxes_to_patches(boxes: torch.Tensor, g: int, patch_size: int, dilation: float) -> torch.Tensor:
    """Patches overlapping any box. boxes: (B, K, 4) x0, y0, x1, y1 px. Returns (B, L) bool."""
    idx = torch.arange(g, device=boxes.device, dtype=boxes.dtype)
    lo, hi = idx * patch_size, (idx + 1) * patch_size  # (g,) patch pixel extents
    b = boxes + boxes.new_tensor([-dilation, -dilation, dilation, dilation])
    # strict inequalities: a box that only touches a patch edge does not select it
    in_x = (lo[None, None] < b[..., 2:3]) & (hi[None, None] > b[..., 0:1])  # (B, K, g) columns
    in_y = (lo[None, None] < b[..., 3:4]) & (hi[None, None] > b[..., 1:2])  # (B, K, g) rows
    hit = in_y[..., :, None] & in_x[..., None, :]  # (B, K, g_row, g_col)
    return hit.any(1).flatten(1)  # (B, L) raster order


def _bbox(lm: torch.Tensor, idx: tuple[int, ...]) -> torch.Tensor:
    pts = lm[:, list(idx)]  # (B, n, 2)
    return torch.cat([pts.amin(1), pts.amax(1)], -1)  # (B, 4)


def _region_sets(lm: torch.Tensor, g: int, patch_size: int, dilation: float) -> torch.Tensor:
    """Landmark-region part sets. lm: (B, 68, 2) sanitised. Returns (B, 3, L)."""
    eyes = _boxes_to_patches(
        torch.stack([_bbox(lm, ibug68.RIGHT_BROW + ibug68.RIGHT_EYE),
                     _bbox(lm, ibug68.LEFT_BROW + ibug68.LEFT_EYE)], 1), g, patch_size, dilation
    )
    lips = _boxes_to_patches(_bbox(lm, ibug68.MOUTH)[:, None], g, patch_size, dilation) & ~eyes
    # cheeks: horizontally between the upper jaw contour on both sides, vertically from the lower
    # eyelids down to the mouth corners; the nose box adds the bridge between the eyes.
    cheek_box = torch.stack(
        [
            lm[:, ibug68.RIGHT_CHEEK_JAW, 0].amin(1),
            lm[:, ibug68.EYES, 1].amax(1),
            lm[:, ibug68.LEFT_CHEEK_JAW, 0].amax(1),
            lm[:, ibug68.MOUTH_CORNERS, 1].amax(1),
        ],
        -1,
    )  # (B, 4)
    cheek = _boxes_to_patches(
        torch.stack([cheek_box, _bbox(lm, ibug68.NOSE)], 1), g, patch_size, dilation
    )
    cheek = cheek & ~eyes & ~lips
    return torch.stack([eyes, cheek, lips], 1)


def part_sets(
    landmarks: torch.Tensor,
    img_size: int = 224,
    patch_size: int = 16,
    variant: str = "algorithm1",
    dilation: float | None = None,
) -> torch.Tensor:
    """Partition the patch grid into eyes / cheek & nose / lips. landmarks (B, 68, 2) crop px
    → BoolTensor (B, 3, L), L = (img_size / patch_size)²; how each variant reads the paper's
    Algorithm 1 is argued in docs/DESIGN.md ("Algorithm 1 bands").

    * ``algorithm1``: three bands of patch rows (``floor(y / patch_size)``): eyes = rows 0 …
      row of the lowest eye landmark (max y over 36-47), cheek & nose = … row of the nose base
      (33), lips = the rest; each band keeps at least one row (never empty).
    * ``region``: patches overlapping landmark boxes dilated by ``dilation`` px (default
      ``patch_size / 8``): eyes = brow + eye boxes (17-21 ∪ 36-41, 22-26 ∪ 42-47), lips = the
      mouth box (48-67), cheek & nose = the nose box (27-35) ∪ a cheek box (jaw points 1-3 to
      13-15, lower eyelids to mouth corners) minus eyes and lips; disjoint, not covering the
      grid; a set left empty takes that part's ``algorithm1`` band.
    * ``literal``: raster patch indices: eyes = 0 … the patch of landmark 16, cheek & nose = …
      the patch of landmark 15 (at least one), lips = the rest.

    Degenerate landmarks (non-finite, or spread smaller than a patch) are replaced by the mean
    face template for that sample (`sanitize_landmarks`).
    """
    g = _grid(img_size, patch_size)
    lm = sanitize_landmarks(landmarks, img_size, patch_size)
    bands = _algorithm1_sets(lm, g, patch_size)
    if variant == "algorithm1":
        return bands
    if variant == "literal":
        return _literal_sets(lm, g, patch_size)
    if variant == "region":
        d = patch_size / 8 if dilation is None else float(dilation)
        sets = _region_sets(lm, g, patch_size, d)
        empty = ~sets.any(-1, keepdim=True)  # (B, 3, 1)
        return torch.where(empty, bands, sets)
    raise ValueError(f"deepfakemae/masking.py: unknown part-set variant {variant!r}; use one of {VARIANTS}")


class MaskOutput(NamedTuple):
    """Result of `FacialPartMasker`: ``mask`` (B, L) bool, True = masked; ``part`` (B,) long,
    the part index masked per sample (0 eyes, 1 cheek & nose, 2 lips; -1 for ``random``)."""

    mask: torch.Tensor
    part: torch.Tensor


def _mask_k_of(selectable: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mask ``k[b]`` patches chosen uniformly among ``selectable[b]``. (B, L) bool, (B,) → (B, L)."""
    B, L = selectable.shape
    scores = torch.rand(B, L, generator=generator, device=selectable.device)  # (B, L) in [0, 1)
    scores = scores.masked_fill(~selectable, 2.0)  # non-selectable patches sort last
    ids = scores.argsort(1)  # (B, L): selectable patches in random order first
    take = torch.arange(L, device=selectable.device)[None] < k[:, None]  # (B, L)
    return torch.zeros_like(selectable).scatter(1, ids, take)


class FacialPartMasker:
    """Draws stage-1 masks from landmarks (vectorised over the batch and the patches).

    strategy: ``facial_part`` (paper's RA: one of the three parts uniformly at random per sample),
    ``eyes`` / ``cheek_nose`` / ``lips`` (Table 5 single-part columns), ``random`` (MAE's RP:
    random patches over the whole image, ``ratio`` of all L patches).
    ratio: masking ratio M_r relative to the selected part (Table 4: 0.25 / 0.5 / 0.75).
    variant: part-set construction, ``algorithm1``, ``region`` or ``literal`` (see `part_sets`).
    """

    def __init__(
        self,
        strategy: str = "facial_part",
        ratio: float = 0.5,
        variant: str = "algorithm1",
        img_size: int = 224,
        patch_size: int = 16,
        dilation: float | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"deepfakemae/masking.py: unknown strategy {strategy!r}; use one of {STRATEGIES}")
        if variant not in VARIANTS:
            raise ValueError(f"deepfakemae/masking.py: unknown variant {variant!r}; use one of {VARIANTS}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"deepfakemae/masking.py: ratio must be in (0, 1], got {ratio}")
        self.strategy, self.ratio, self.variant = strategy, float(ratio), variant
        self.img_size, self.patch_size, self.dilation = img_size, patch_size, dilation
        self.grid = _grid(img_size, patch_size)
        self.num_patches = self.grid**2

    @classmethod
    def on_grid_of(cls, mae, strategy: str, ratio: float, variant: str) -> FacialPartMasker:
        """A masker on ``mae``'s patch grid (its ``img_size`` and ``patch_size``)."""
        return cls(strategy, ratio, variant, mae.img_size, mae.patch_size)

    def part_sets(self, landmarks: torch.Tensor) -> torch.Tensor:
        """(B, 68, 2) → (B, 3, L) bool part sets for this masker's geometry."""
        return part_sets(landmarks, self.img_size, self.patch_size, self.variant, self.dilation)

    def __call__(self, landmarks: torch.Tensor, generator: torch.Generator | None = None) -> MaskOutput:
        """Draw masks for a batch. landmarks (B, 68, 2) crop px; ``generator`` must live on
        ``landmarks.device``. Returns `MaskOutput` (mask (B, L) bool, part (B,) long)."""
        B, dev, L = landmarks.shape[0], landmarks.device, self.num_patches
        if self.strategy == "random":
            k = min(max(math.floor(self.ratio * L + 0.5), 1), L - 1)
            everything = torch.ones(B, L, dtype=torch.bool, device=dev)
            mask = _mask_k_of(everything, torch.full((B,), k, device=dev), generator)
            return MaskOutput(mask, torch.full((B,), -1, dtype=torch.long, device=dev))
        sets = self.part_sets(landmarks)  # (B, 3, L)
        if self.strategy == "facial_part":
            part = torch.randint(0, 3, (B,), generator=generator, device=dev)  # (B,)
        else:
            part = torch.full((B,), PART_NAMES.index(self.strategy), dtype=torch.long, device=dev)
        selected = sets[torch.arange(B, device=dev), part]  # (B, L)
        n = selected.sum(1)  # (B,) ≥ 1 by construction of part_sets
        k = torch.floor(self.ratio * n.double() + 0.5).long()
        k = torch.minimum(k.clamp(min=1), n)  # (B,)
        return MaskOutput(_mask_k_of(selected, k, generator), part)


def stage1_masking(hparams: dict) -> tuple[float, str]:
    """``(mask_ratio, part_variant)`` a stage-1 run's hyper-parameters record (0.5 and
    ``algorithm1``, the defaults, for a run that records none)."""
    return float(hparams.get("mask_ratio", 0.5)), str(hparams.get("part_variant", "algorithm1"))
