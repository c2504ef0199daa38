"""The iBUG-68 scheme (deepfakemae/faces/ibug68.py) and the one landmark-rescale rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepfakemae.faces import ibug68
from deepfakemae.faces.tensors import resize_faces
from deepfakemae.masking import synthetic_landmarks


def test_part_groups_cover_the_scheme_once():
    parts = ibug68.JAW + ibug68.BROWS + ibug68.NOSE + ibug68.EYES + ibug68.MOUTH
    assert sorted(parts) == list(range(ibug68.NUM_POINTS))
    assert len(ibug68.MEAN_FACE) == ibug68.NUM_POINTS


def test_flip_permutation_mirrors_the_symmetric_mean_face_onto_itself():
    face = np.asarray(ibug68.MEAN_FACE)  # (68, 2), x and y in [0, 1]
    flipped = face[ibug68.FLIP_PERMUTATION] * [-1, 1] + [1, 0]
    np.testing.assert_allclose(flipped, face, atol=2e-3)
    np.testing.assert_array_equal(ibug68.FLIP_PERMUTATION[ibug68.FLIP_PERMUTATION],
                                  np.arange(ibug68.NUM_POINTS))


def test_five_points_are_eye_centres_nose_tip_and_mouth_corners():
    lm = np.arange(ibug68.NUM_POINTS * 2, dtype=np.float64).reshape(-1, 2)
    five = ibug68.five_points(lm)
    np.testing.assert_array_equal(
        five, [lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def test_rescale_keeps_pixel_centres_and_edges():
    # doubling a crop: pixel 0 (edge -0.5 .. 0.5) becomes pixels 0 and 1, centred at 0.5
    points = np.array([[0.0, 0.0], [-0.5, 3.5], [3.0, 1.5]])
    np.testing.assert_allclose(ibug68.rescale_landmarks(points, 2.0),
                               [[0.5, 0.5], [-0.5, 7.5], [6.5, 3.5]])
    # per-axis scale, and torch tensors alike
    out = ibug68.rescale_landmarks(torch.tensor([[1.0, 1.0]]), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(out, torch.tensor([[2.5, 0.25]]))


def _blob(size: int, centre: tuple[float, float], sigma: float = 2.0) -> np.ndarray:
    y, x = np.mgrid[:size, :size].astype(np.float64)  # pixel (j, i) centred at (i, j)
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma ** 2))


def _centroid(image: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    return np.array([(image * x).sum(), (image * y).sum()]) / image.sum()


@pytest.mark.parametrize("new_size", [64, 16])
def test_rescale_follows_the_pixels_of_both_resizers(new_size):
    """A blob at a landmark stays at the rescaled landmark under cv2.resize (the datasets) and
    F.interpolate (the Mapping module's MAE input)."""
    centre = np.array([11.3, 20.6])
    image = _blob(32, tuple(centre)).astype(np.float32)
    expected = ibug68.rescale_landmarks(centre, new_size / 32)
    resized_cv = cv2.resize(image, (new_size, new_size), interpolation=cv2.INTER_LINEAR)
    resized_t = F.interpolate(torch.from_numpy(image)[None, None], size=(new_size, new_size),
                              mode="bilinear", align_corners=False)[0, 0].numpy()
    for resized in (resized_cv, resized_t):
        assert np.abs(_centroid(resized) - expected).max() < 0.1
    naive = centre * new_size / 32  # the former `lm * s` of the Mapping module
    assert np.abs(_centroid(resized_t) - naive).max() > 0.2


def test_mapping_target_and_datasets_rescale_alike():
    """The masked Mapping target masks the MAE-size face at the landmarks the datasets would
    give a crop resized to that size."""
    from deepfakemae.models.mae import create_mae
    from deepfakemae.modules.mapping import MappingModule

    module = MappingModule(target="masked", mask_strategy="lips", mask_ratio=0.5,
                           part_variant="algorithm1", map_size=16)
    module.attach_mae(create_mae("mae_vit_micro"))  # 64 px
    seen = []
    masker = module._masker
    module._masker = lambda lm: seen.append(lm) or masker(lm)
    landmarks = synthetic_landmarks(2, 128, generator=torch.Generator().manual_seed(0))
    module.map_target(torch.zeros(2, 3, 128, 128), landmarks)
    crops = np.zeros((2, 128, 128, 3), np.uint8)
    _, from_dataset = resize_faces(crops, landmarks.numpy(), 64)
    np.testing.assert_allclose(seen[0].numpy(), from_dataset, atol=1e-5)
