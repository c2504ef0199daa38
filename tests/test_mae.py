"""Stage-1 masked autoencoder (deepfakemae/models/mae.py) on synthetic tensors and real face crops."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from deepfakemae.constants import IMAGENET_MEAN, IMAGENET_STD
from deepfakemae.masking import FacialPartMasker, part_sets, synthetic_landmarks
from deepfakemae.models import (
    MaskedAutoencoderViT,
    create_mae,
    list_presets,
    load_timm_mae_encoder,
    register_preset,
    sincos_pos_embed_2d,
)


def micro(**kw) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return create_mae("mae_vit_micro", **kw).eval()


def uneven_masks(batch: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masker = FacialPartMasker("facial_part", 0.5, "algorithm1", 64, 8)
    while True:
        mask = masker(synthetic_landmarks(batch, 64, g), g).mask
        if mask.sum(1).unique().numel() > 1:
            return mask


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_sincos_table_layout() -> None:
    pe = sincos_pos_embed_2d(16, 3)  # (1, 10, 16)
    assert pe.shape == (1, 10, 16) and (pe[0, 0] == 0).all()
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    row, col = 2, 1  # raster token 2*3 + 1 = 7 → index 8 with CLS
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(pe[0, 8].double(), expected, rtol=0, atol=1e-6)


def test_patchify_roundtrip_and_order() -> None:
    m = micro()
    x = torch.randn(2, 3, 64, 64)
    p = m.patchify(x)  # (2, 64, 192)
    assert p.shape == (2, 64, 8 * 8 * 3)
    torch.testing.assert_close(m.unpatchify(p), x, rtol=0, atol=0)
    # raster order: patch 9 is row 1, col 1; channel-last inside the patch
    torch.testing.assert_close(p[0, 9].view(8, 8, 3), x[0, :, 8:16, 8:16].permute(1, 2, 0))


def test_fused_attention_is_on() -> None:
    m = micro()
    assert all(b.attn.fused_attn for b in [*m.blocks, *m.decoder_blocks])


def test_presets_registry() -> None:
    assert {"mae_vit_base_patch16", "mae_vit_tiny_patch16_112", "mae_vit_micro"} <= set(list_presets())
    m = create_mae("mae_vit_tiny_patch16_112", norm_pix_loss=True)
    assert m.norm_pix_loss and m.img_size == 112 and m.num_patches == 49 and m.embed_dim == 192
    with pytest.raises(KeyError, match="available"):
        create_mae("mae_vit_huge")
    register_preset("test_only_preset", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(ValueError, match="overwrite"):
        register_preset("test_only_preset", img_size=32)
    assert create_mae("test_only_preset").num_patches == 16


# ---------------------------------------------------------------------------------------------
# encoder / decoder behaviour
# ---------------------------------------------------------------------------------------------
def test_full_face_features_shape() -> None:
    m = micro()
    x = torch.randn(2, 3, 64, 64)
    latent, layout = m.forward_encoder(x)
    assert latent.shape == (2, 1 + 64, 64) and layout.valid is None
    torch.testing.assert_close(m.forward_features(x), latent)


def test_encoder_ignores_masked_pixels() -> None:
    m = micro()
    mask = uneven_masks()
    x = torch.randn(4, 3, 64, 64)
    noise = m.unpatchify(torch.randn(4, 64, 192) * mask[..., None])  # changes masked patches only
    for uneven in ("packed", "padded"):
        m.uneven = uneven
        a, layout = m.forward_encoder(x, mask)
        b, _ = m.forward_encoder(x + 5 * noise, mask)
        valid = torch.nn.functional.pad(layout.valid, (1, 0), value=True)
        torch.testing.assert_close(a[valid], b[valid], rtol=0, atol=0)


@pytest.mark.parametrize("uneven", ["packed", "padded"])
def test_uneven_batch_equals_samples_alone(uneven: str) -> None:
    m = micro(uneven=uneven)
    mask = uneven_masks(6)
    x = torch.randn(6, 3, 64, 64)
    latent, layout = m.forward_encoder(x, mask)
    assert layout.valid is not None, "uneven counts must take the padding path"
    _, pred, _ = m(x, mask)
    for i in range(6):
        lat_i, layout_i = m.forward_encoder(x[i : i + 1], mask[i : i + 1])
        assert layout_i.valid is None
        n = lat_i.shape[1]
        torch.testing.assert_close(latent[i, :n], lat_i[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pred[i], m(x[i : i + 1], mask[i : i + 1])[1][0], rtol=1e-5, atol=1e-5)


def test_packed_and_padded_paths_agree_including_gradients() -> None:
    mask = uneven_masks(5, seed=3)
    x = torch.randn(5, 3, 64, 64)
    grads = {}
    for uneven in ("packed", "padded"):
        m = micro(uneven=uneven).train()
        loss, pred, _ = m(x, mask)
        loss.backward()
        grads[uneven] = (loss.detach(), pred.detach(), m.blocks[0].attn.qkv.weight.grad.clone())
    for a, b in zip(grads["packed"], grads["padded"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_equal_counts_take_no_padding() -> None:
    m = micro()
    mask = FacialPartMasker("random", 0.75, "algorithm1", 64, 8)(torch.zeros(3, 68, 2)).mask
    latent, layout = m.forward_encoder(torch.randn(3, 3, 64, 64), mask)
    assert layout.valid is None and latent.shape == (3, 1 + 16, 64)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_matches_hand_computation(norm_pix: bool) -> None:
    m = micro(norm_pix_loss=norm_pix)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, [3, 10, 40]] = True
    mask[1, [0]] = True
    loss, pred, _ = m(x, mask)
    errors = []
    for b in range(2):
        for idx in mask[b].nonzero().flatten().tolist():
            r, c = divmod(idx, 8)
            patch = x[b, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8].permute(1, 2, 0).reshape(-1)
            if norm_pix:
                patch = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
            errors.append(((pred[b, idx] - patch) ** 2).mean())
    torch.testing.assert_close(loss, torch.stack(errors).mean())


def test_mask_validation() -> None:
    m = micro()
    with pytest.raises(ValueError, match="bool"):
        m(torch.randn(1, 3, 64, 64), torch.zeros(1, 64))
    with pytest.raises(ValueError, match="every patch"):
        m(torch.randn(1, 3, 64, 64), torch.ones(1, 64, dtype=torch.bool))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruct_keeps_visible_pixels(norm_pix: bool) -> None:
    m = micro(norm_pix_loss=norm_pix)
    x = torch.randn(3, 3, 64, 64)
    mask = uneven_masks(3)
    rec = m.reconstruct(x, mask)
    assert rec.shape == x.shape
    visible = m.unpatchify((~mask)[..., None].expand(-1, -1, 192).float()).bool()
    torch.testing.assert_close(rec[visible], x[visible], rtol=0, atol=0)
    assert not torch.allclose(rec[~visible], x[~visible])
    pred = m(x, mask)[1]
    if norm_pix:
        t = m.patchify(x)
        pred = pred * (t.var(-1, keepdim=True) + 1e-6).sqrt() + t.mean(-1, keepdim=True)
    torch.testing.assert_close(m.patchify(rec)[mask], pred[mask])


# ---------------------------------------------------------------------------------------------
# loading timm / MAE weights
# ---------------------------------------------------------------------------------------------
def _timm_micro() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=0)


def test_load_timm_encoder_from_small_vit(tmp_path: Path) -> None:
    vit = _timm_micro()
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed_2d(64, 8))
    sd = vit.state_dict()
    path = tmp_path / "mae.pth"
    torch.save({"model": sd}, path)  # original MAE checkpoints wrap the weights in "model"
    for source in (sd, path):
        m = micro()
        report = load_timm_mae_encoder(m, source)
        assert report.missing == [] and report.unexpected == [] and report.ignored == ["pos_embed"]
        assert report.pos_embed_max_abs_diff == pytest.approx(0.0, abs=1e-6)
        ours = m.state_dict()
        for key in report.loaded:
            torch.testing.assert_close(ours[key], sd[key], rtol=0, atol=0)
        assert "cls_token" in report.loaded and "norm.weight" in report.loaded
        # the loaded encoder computes what timm computes on the full face (same positions)
        torch.testing.assert_close(m.forward_features(torch.ones(1, 3, 64, 64)),
                                   vit.eval().forward_features(torch.ones(1, 3, 64, 64)), rtol=1e-4, atol=1e-5)


def test_load_rejects_shape_mismatch() -> None:
    sd = _timm_micro().state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        load_timm_mae_encoder(create_mae("mae_vit_tiny_patch16_112"), sd)


@pytest.mark.slow
def test_load_timm_vit_base_mae_keys() -> None:
    vit = timm.create_model("vit_base_patch16_224.mae", pretrained=False)
    sd = vit.state_dict()
    del vit
    m = create_mae("mae_vit_base_patch16")
    report = load_timm_mae_encoder(m, sd)
    assert report.missing == [], report.missing
    assert report.unexpected == [], report.unexpected
    assert len(report.loaded) == 2 + 1 + 12 * 12 + 2  # patch_embed(2) cls blocks(12 × 12) norm(2)
    ours = m.state_dict()
    assert all(torch.equal(ours[k], sd[k]) for k in report.loaded)


# ---------------------------------------------------------------------------------------------
# real face crops (dlib landmarks on skimage's astronaut)
# ---------------------------------------------------------------------------------------------
@cache
def _dlib_faces(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three face crops (original, mirrored, wider) of ``astronaut()`` with dlib 68 landmarks.

    Returns images (3, 3, size, size) ImageNet-normalised and landmarks (3, 68, 2) crop px.
    """
    dlib = pytest.importorskip("dlib")
    cv2 = pytest.importorskip("cv2")
    from skimage import data

    from deepfakemae.faces.landmarks import dlib_model_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path()))
    photo = data.astronaut()
    images, marks = [], []
    for img, scale in ((photo, 1.6), (np.ascontiguousarray(photo[:, ::-1]), 1.6), (photo, 2.0)):
        rect = max(detector(img, 1), key=lambda r: r.width() * r.height())
        shape = predictor(img, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float32)
        side = scale * (pts[:, 0].max() - pts[:, 0].min())
        cx = (pts[:, 0].max() + pts[:, 0].min()) / 2
        cy = (pts[:, 1].max() + pts[:, 1].min()) / 2 - 0.1 * (pts[:, 1].max() - pts[:, 1].min())
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        s = int(round(side))
        crop = cv2.resize(img[y0 : y0 + s, x0 : x0 + s], (size, size), interpolation=cv2.INTER_AREA)
        images.append(crop)
        marks.append((pts - [x0, y0]) * size / s)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x, torch.from_numpy(np.stack(marks))


def test_real_landmarks_give_sensible_parts() -> None:
    _, lm = _dlib_faces(224)
    for variant in ("algorithm1", "region"):
        sets = part_sets(lm, 224, 16, variant)
        assert (sets.sum(-1) >= 4).all(), (variant, sets.sum(-1))
        rows = torch.arange(196) // 14
        mean_row = [(rows * sets[:, p]).sum(-1) / sets[:, p].sum(-1) for p in range(3)]
        assert (mean_row[0] < mean_row[1]).all() and (mean_row[1] < mean_row[2]).all(), variant


def test_micro_preset_overfits_real_faces() -> None:
    """Classic overfit check: fixed facial-part masks on three real crops, 100 AdamW steps."""
    x, lm = _dlib_faces(64)
    torch.manual_seed(0)
    m = create_mae("mae_vit_micro").train()
    out = FacialPartMasker("facial_part", 0.5, "algorithm1", 64, 8)(lm, torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
    with torch.no_grad():
        start = m(x, out.mask)[0].item()
    for _ in range(100):
        loss = m(x, out.mask)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = m.eval()(x, out.mask)[0].item()
    assert end < 0.25 * start, (start, end)
