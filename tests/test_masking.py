"""Facial-part patch sets and masks (deepfakemae/masking.py)."""

from __future__ import annotations

import math

import pytest
import torch

from deepfakemae.masking import (
    PART_NAMES,
    STRATEGIES,
    VARIANTS,
    FacialPartMasker,
    part_sets,
    sanitize_landmarks,
    synthetic_landmarks,
    template_landmarks,
)


def _patch_of(points: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """(n, 2) pixel points → (n,) raster patch index."""
    cell = (points / patch).floor().long().clamp(0, grid - 1)
    return cell[:, 1] * grid + cell[:, 0]


def test_algorithm1_bands_on_mean_face() -> None:
    sets = part_sets(template_landmarks(224)[None], 224, 16, "algorithm1")[0]  # (3, 196)
    assert sets.shape == (3, 196)
    assert (sets.sum(0) == 1).all(), "bands partition the whole grid"
    rows = torch.arange(196) // 14
    eyes_rows, cheek_rows, lips_rows = (rows[s] for s in sets)
    assert eyes_rows.min() == 0 and lips_rows.max() == 13
    assert eyes_rows.max() < cheek_rows.min() and cheek_rows.max() < lips_rows.min()
    lm = template_landmarks(224)
    # every eye landmark is in the eyes band, the mouth in the lips band, the nose tip in cheek&nose
    assert sets[0, _patch_of(lm[36:48], 16, 14)].all()
    assert sets[2, _patch_of(lm[48:68], 16, 14)].all()
    assert sets[1, _patch_of(lm[30:31], 16, 14)].all()


def test_region_sets_follow_landmarks() -> None:
    lm = template_landmarks(224)
    sets = part_sets(lm[None], 224, 16, "region")[0]
    assert (sets.sum(0) <= 1).all(), "region sets are disjoint"
    assert (sets.sum(1) > 0).all()
    assert not sets.all(0).any() and sets.sum() < 196, "background corners belong to no part"
    assert sets[0, _patch_of(lm[list(range(17, 27)) + list(range(36, 48))], 16, 14)].all()
    assert sets[2, _patch_of(lm[48:68], 16, 14)].all()
    assert sets[1, _patch_of(lm[30:31], 16, 14)].all()  # nose tip
    assert not sets[:, 0].any()  # top-left corner is background


@pytest.mark.parametrize("variant", VARIANTS)
def test_degenerate_landmarks_fall_back_to_template(variant: str) -> None:
    tpl = part_sets(template_landmarks(112)[None], 112, 16, variant)
    bad = torch.stack([torch.zeros(68, 2), torch.full((68, 2), float("nan")), torch.full((68, 2), 50.0)])
    sets = part_sets(bad, 112, 16, variant)
    assert torch.equal(sets, tpl.expand(3, -1, -1))
    good = synthetic_landmarks(1, 112, torch.Generator().manual_seed(1))
    assert torch.equal(sanitize_landmarks(good, 112, 16), good)


def test_face_partly_outside_crop_keeps_parts_non_empty() -> None:
    lm = template_landmarks(224)[None] + torch.tensor([0.0, 150.0])  # mouth below the crop
    for variant in VARIANTS:
        sets = part_sets(lm, 224, 16, variant)
        assert (sets.sum(-1) > 0).all(), variant


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strategy", ["facial_part", "eyes", "cheek_nose", "lips"])
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_masks_lie_in_selected_part_with_ratio_count(variant: str, strategy: str, ratio: float) -> None:
    g = torch.Generator().manual_seed(0)
    lm = synthetic_landmarks(16, 224, g)
    masker = FacialPartMasker(strategy, ratio, variant, 224, 16)
    out = masker(lm, g)
    assert out.mask.dtype == torch.bool and out.mask.shape == (16, 196)
    sets = masker.part_sets(lm)
    if strategy != "facial_part":
        assert (out.part == PART_NAMES.index(strategy)).all()
    for b in range(16):
        selected = sets[b, out.part[b]]
        assert not (out.mask[b] & ~selected).any(), "masked patch outside the selected part"
        n = int(selected.sum())
        assert int(out.mask[b].sum()) == max(1, math.floor(ratio * n + 0.5))


def test_facial_part_picks_every_part_and_is_seeded() -> None:
    lm = synthetic_landmarks(300, 112, torch.Generator().manual_seed(0))
    masker = FacialPartMasker("facial_part", 0.5, "algorithm1", 112, 16)
    out = masker(lm, torch.Generator().manual_seed(5))
    counts = torch.bincount(out.part, minlength=3)
    assert (counts > 70).all(), counts  # ~100 each
    again = masker(lm, torch.Generator().manual_seed(5))
    assert torch.equal(out.mask, again.mask) and torch.equal(out.part, again.part)


def test_random_strategy_masks_ratio_of_all_patches() -> None:
    masker = FacialPartMasker("random", 0.75, "algorithm1", 224, 16)
    out = masker(synthetic_landmarks(4, 224), torch.Generator().manual_seed(0))
    assert (out.mask.sum(1) == 147).all()
    assert (out.part == -1).all()
    assert not torch.equal(out.mask[0], out.mask[1])


def test_small_part_still_masks_one_patch() -> None:
    masker = FacialPartMasker("cheek_nose", 0.01, "algorithm1", 64, 16)  # 4x4 grid
    out = masker(template_landmarks(64)[None].repeat(3, 1, 1))
    assert (out.mask.sum(1) == 1).all()


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="strategy"):
        FacialPartMasker("nose")
    with pytest.raises(ValueError, match="ratio"):
        FacialPartMasker(ratio=0.0)
    with pytest.raises(ValueError, match="variant"):
        FacialPartMasker(variant="bands")
    with pytest.raises(ValueError, match="three facial parts"):
        FacialPartMasker(img_size=32, patch_size=16)
    with pytest.raises(ValueError, match=r"\(B, 68, 2\)"):
        part_sets(torch.zeros(2, 5, 2))
    assert set(STRATEGIES) == {"facial_part", "eyes", "cheek_nose", "lips", "random"}


def test_literal_algorithm1_runs_on_mean_face() -> None:
    """Algorithm 1 word for word: raster runs ending at the patches of the 1-based 17th and 16th
    landmarks (0-based 16 and 15, jaw points at eye height): 82 / 14 / 100 patches at 224/16."""
    lm = template_landmarks(224)
    sets = part_sets(lm[None], 224, 16, "literal")[0]  # (3, 196)
    assert sets.sum(-1).tolist() == [82, 14, 100]
    assert (sets.sum(0) == 1).all()
    end_eyes, end_cheek = _patch_of(lm[[16, 15]], 16, 14).tolist()
    assert (end_eyes, end_cheek) == (81, 95)
    idx = torch.arange(196)
    assert torch.equal(sets[0], idx <= end_eyes) and torch.equal(sets[2], idx > end_cheek)
    # a tilted face whose 16th landmark sits above its 17th still keeps one cheek patch
    tilted = lm.clone()
    tilted[15] = lm[16] - torch.tensor([0.0, 20.0])
    assert part_sets(tilted[None], 224, 16, "literal")[0].sum(-1).tolist() == [82, 1, 113]


def test_rp_matched_ratio_equals_the_facial_part_share(astronaut_face_session) -> None:
    """Table 5's ``rp_matched`` masks as many patches as ``facial_part`` at 0.5 does on average
    (a part drawn uniformly), on the astronaut's dlib landmarks aligned at 224 and the template."""
    import yaml

    from deepfakemae.faces.align import align_face
    from deepfakemae.plans import TABLES_DIR

    face = astronaut_face_session
    _, aligned = align_face(face["image"], face["landmarks"], 224)
    spec = yaml.safe_load((TABLES_DIR / "table5.yaml").read_text())["variants"]["rp_matched"]
    args = spec["pretrain"]["args"]["model"]["init_args"]
    assert args["mask_strategy"] == "random"
    rp = FacialPartMasker("random", args["mask_ratio"])(torch.zeros(1, 68, 2)).mask.sum().item()
    for lm in (torch.as_tensor(aligned)[None], template_landmarks(224)[None]):
        per_part = [FacialPartMasker(part, 0.5)(lm).mask.sum().item() for part in PART_NAMES]
        assert abs(rp - sum(per_part) / 3) <= 0.5, (rp, per_part)  # the nearest whole count
