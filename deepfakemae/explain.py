"""Explanations of one face: facial-part reconstructions (paper Fig. 1) and class-activation
maps of the detector's branches (paper Fig. 3), drawn as labelled PNG figures.

Grad-CAM (Selvaraju et al.) with plain autograd, on these layers:

* Mapping Network: the fused multi-scale features ``(B, 448, S, S)`` (ResNet-18 layer1 ⊕ layer2 ⊕
  layer3 resized to ``map_size`` and concatenated, :meth:`MappingNetwork.forward_features`) — the
  tensor both the mapper and the classifier read. Captured as the input of ``net.mapper``.
* Finetuning Network: the patch tokens ``(B, L, D)`` of the last encoder layer, after the
  encoder's final LayerNorm (what mean pooling averages), reshaped to the ``g × g`` patch grid.
  With ``pooling="cls"`` those tokens do not reach the head, so the input tokens of the last
  block (which its attention mixes into the CLS token) are used instead.

Target: the fake log-odds (Mapping: its single logit; Finetuning: ``logit_fake - logit_real``)
when the branch calls the face fake, its negative when it calls it real — so a real face shows
what the branch finds *real* about it (paper Fig. 3 shows both cases) instead of an empty map.
CAM = ReLU(Σ_c w_c A_c), w_c = mean of ∂target/∂A_c over positions, scaled to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from deepfakemae.faces.tensors import resize_faces, to_tensor
from deepfakemae.masking import PART_NAMES, FacialPartMasker
from deepfakemae.models.classifier import FinetuneClassifier
from deepfakemae.models.mae import MaskedAutoencoderViT
from deepfakemae.models.mapping_network import MappingNetwork
from deepfakemae.visualize import (
    heatmap_overlay,
    mask_to_pixels,
    reconstruction_grid,
    save_png,
    text_strip,
    to_uint8,
)

PART_TITLES = {"eyes": "eyes", "cheek_nose": "cheek & nose", "lips": "lips"}
MIN_PANEL = 192  # faces are drawn at least this many pixels wide (nearest-neighbour upscaling)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


# -- Grad-CAM ----------------------------------------------------------------------------------

def _cam_from(activations: Tensor, gradients: Tensor, channel_dim: int) -> np.ndarray:
    """ReLU(Σ_c mean(grad_c)·A_c) over one sample, scaled to [0, 1]; positions keep their shape."""
    spatial = [d for d in range(activations.ndim) if d != channel_dim]
    weights = gradients.mean(dim=spatial, keepdim=True)  # (1 along positions, C)
    cam = (weights * activations).sum(dim=channel_dim).clamp(min=0)  # positions
    cam = cam.detach().float().cpu().numpy()
    peak = float(cam.max())
    return cam / peak if peak > 0 else cam


def mapping_gradcam(net: MappingNetwork, image: Tensor) -> tuple[np.ndarray, float, Tensor]:
    """Grad-CAM of the Mapping Network for one face.

    image (1,3,H,W) normalised → (cam (S,S) in [0,1], fake probability, mapped face (1,3,S,S)).
    """
    captured: dict[str, Tensor] = {}

    def keep_input(_module, inputs):
        fused = inputs[0]  # (1, 448, S, S)
        fused.retain_grad()
        captured["fused"] = fused

    handle = net.mapper.register_forward_pre_hook(keep_input)
    try:
        with torch.enable_grad():
            logit, mapped = net(image)  # (1,), (1, 3, S, S)
            sign = 1.0 if float(logit[0].detach()) >= 0 else -1.0  # explain the predicted class
            (sign * logit[0]).backward()
    finally:
        handle.remove()
    fused = captured["fused"]
    cam = _cam_from(fused[0], fused.grad[0], channel_dim=0)  # (S, S)
    net.zero_grad(set_to_none=True)
    return cam, float(torch.sigmoid(logit[0].detach().float())), mapped.detach()


def finetune_gradcam(classifier: FinetuneClassifier, image: Tensor) -> tuple[np.ndarray, float]:
    """Grad-CAM of the Finetuning Network for one face (a one-frame clip).

    image (1,3,H,W) normalised → (cam (g,g) in [0,1] over the patch grid, fake probability).
    """
    encoder = classifier.encoder
    captured: dict[str, Tensor] = {}

    def keep_output(_module, _inputs, output):
        output.retain_grad()
        captured["tokens"] = output  # (1, 1+L, D) after the final norm

    def keep_input(_module, inputs):
        inputs[0].retain_grad()
        captured["tokens"] = inputs[0]  # (1, 1+L, D) entering the last block

    if classifier.pooling == "mean":
        handle = encoder.norm.register_forward_hook(keep_output)
    else:
        handle = encoder.blocks[-1].register_forward_pre_hook(keep_input)
    try:
        with torch.enable_grad():
            logits = classifier(image[:, None])  # (1, 2) from a (1, 1, 3, H, W) clip
            log_odds = logits[0, 1] - logits[0, 0]
            sign = 1.0 if float(log_odds.detach()) >= 0 else -1.0
            (sign * log_odds).backward()
    finally:
        handle.remove()
    tokens = captured["tokens"]
    patches, grads = tokens[0, 1:], tokens.grad[0, 1:]  # (L, D)
    grid = int(math.isqrt(patches.shape[0]))
    cam = _cam_from(patches, grads, channel_dim=1).reshape(grid, grid)  # (g, g)
    classifier.zero_grad(set_to_none=True)
    return cam, float(logits[0].detach().float().softmax(-1)[1])


# -- facial-part reconstructions ---------------------------------------------------------------

@torch.no_grad()
def part_reconstructions(mae: MaskedAutoencoderViT, image: Tensor, landmarks: Tensor,
                         ratio: float = 0.5, variant: str = "algorithm1", seed: int = 0
                         ) -> tuple[Tensor, Tensor]:
    """Mask each facial part of one face in turn and reconstruct it with the stage-1 MAE.

    image (1,3,H,W) normalised, landmarks (1,68,2) crop px at the MAE's size →
    (masks (3,L) bool, reconstructions (3,3,H,W)), rows in ``PART_NAMES`` order.
    """
    masks = []
    for part in PART_NAMES:
        masker = FacialPartMasker.on_grid_of(mae, part, ratio, variant)
        generator = torch.Generator(device=landmarks.device).manual_seed(seed)
        masks.append(masker(landmarks, generator).mask[0])  # (L,)
    mask = torch.stack(masks)  # (3, L)
    batch = image.expand(len(PART_NAMES), -1, -1, -1)  # (3, 3, H, W)
    return mask, mae.reconstruct(batch, mask)


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def _scale_for(size: int) -> int:
    return max(1, math.ceil(MIN_PANEL / size))


def _label_column(rows: list[list[str]], row_height: int, width: int = 100) -> np.ndarray:
    """A dark column with the text lines of each row, vertically centred in that row."""
    col = np.full((row_height * len(rows), width, 3), 32, np.uint8)
    for i, lines in enumerate(rows):
        top = i * row_height + row_height // 2 - 9 * len(lines) + 14
        for j, line in enumerate(lines):
            cv2.putText(col, line, (6, top + 18 * j), _FONT, 0.45, (240, 240, 240), 1,
                        cv2.LINE_AA)
    return col


def _jet(heat: np.ndarray) -> np.ndarray:
    """[0,1] float map → RGB uint8 with the JET colour map."""
    grey = (np.clip(heat, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def reconstruction_figure(image: Tensor, masks: Tensor, recons: Tensor, patch_size: int
                          ) -> np.ndarray:
    """Rows eyes / cheek & nose / lips of ``original | masked | reconstruction | |difference|``.

    image (1,3,H,W), masks (3,L), recons (3,3,H,W) → RGB uint8 figure. The difference is the
    mean absolute pixel error over RGB, on one colour scale for all rows (the row label gives
    the mean error over the masked pixels, in 0-255 units).
    """
    n, size = masks.shape[0], image.shape[-1]
    grid = reconstruction_grid(image.expand(n, -1, -1, -1), masks, recons, patch_size,
                               max_rows=n)  # (n*H, 3*W, 3)
    original, rebuilt = to_uint8(image.expand(n, -1, -1, -1)), to_uint8(recons)  # (n,H,W,3)
    diff = np.abs(original.astype(np.float32) - rebuilt.astype(np.float32)).mean(-1)  # (n,H,W)
    peak = max(float(diff.max()), 1.0)
    pixels = mask_to_pixels(masks, size, patch_size)  # (n, H, W) bool
    grey = cv2.cvtColor(original[0], cv2.COLOR_RGB2GRAY)[..., None].repeat(3, -1)  # (H, W, 3)
    dim = (grey * 0.35).astype(np.uint8)  # visible patches are copied, so no error there
    diff_col = np.concatenate([np.where(m[..., None], _jet(d / peak), dim)
                               for d, m in zip(diff, pixels, strict=True)], axis=0)  # (n*H,W,3)
    panels = _upscale(np.concatenate([grid, diff_col], axis=1), _scale_for(size))
    row_h = panels.shape[0] // n
    errors = [float(d[m].mean()) if m.any() else 0.0 for d, m in zip(diff, pixels, strict=True)]
    rows = [[*PART_TITLES[p].replace(" & ", " &\n").split("\n"), f"err {e:.1f}"]
            for p, e in zip(PART_NAMES, errors, strict=True)]
    body = np.concatenate([_label_column(rows, row_h), panels], axis=1)
    header = text_strip(panels.shape[1], ["original", "masked part", "MAE reconstruction",
                                           f"|difference| (max {peak:.0f})"])
    header = np.concatenate([np.full((header.shape[0], body.shape[1] - panels.shape[1], 3), 32,
                                     np.uint8), header], axis=1)
    return np.concatenate([header, body], axis=0)


@dataclass
class BranchCam:
    """One branch's explanation of a face: its Grad-CAM (any size, [0, 1]), its fake
    probability, and extra pictures it makes of the face as ``(title, caption, RGB uint8)``."""

    title: str
    cam: np.ndarray
    probability: float
    extras: list[tuple[str, str, np.ndarray]] = field(default_factory=list)


def cam_figure(face_rgb: np.ndarray, cams: Sequence[BranchCam]) -> np.ndarray:
    """One row: ``face`` then, per branch, its Grad-CAM overlay and its extra pictures, labelled.

    face_rgb (H,W,3) uint8; the pictures are drawn at the face's (upscaled) side.
    """
    size = face_rgb.shape[0]
    face = _upscale(face_rgb, _scale_for(size))
    side = face.shape[0]
    big = cv2.resize(face_rgb, (side, side), interpolation=cv2.INTER_CUBIC)
    panels, titles, captions = [face], ["face"], ["(model input)"]
    for branch in cams:
        target = "fake" if branch.probability >= 0.5 else "real"
        panels.append(heatmap_overlay(big, branch.cam) if branch.cam.max() > 0 else big)
        titles.append(f"{branch.title} CAM")
        captions.append(f"p(fake)={branch.probability:.2f}, CAM->{target}")
        for title, caption, picture in branch.extras:
            panels.append(cv2.resize(picture, (side, side), interpolation=cv2.INTER_NEAREST))
            titles.append(title)
            captions.append(caption)
    row = np.concatenate(panels, axis=1)
    return np.concatenate([text_strip(row.shape[1], titles), row,
                           text_strip(row.shape[1], captions, scale=0.4)], axis=0)


# -- one face → PNGs ---------------------------------------------------------------------------

def explain_face(face_rgb: np.ndarray, landmarks: np.ndarray, out_dir: str | Path,
                 branches: Iterable, mae: MaskedAutoencoderViT | None = None, ratio: float = 0.5,
                 variant: str = "algorithm1", device: str | torch.device = "cpu"
                 ) -> dict[str, str]:
    """Write ``cam.png`` (and ``reconstruction.png`` when ``mae`` is given) for one face.

    face_rgb (S,S,3) uint8 at the stage-2 models' input size; landmarks (68,2) crop px;
    ``branches``: the detector's branch modules (each has ``activation_map(face)``).
    Returns ``{"cam": path, "reconstruction": path}`` for the files written.
    """
    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    image = to_tensor(face_rgb[None]).to(device)  # (1, 3, S, S)
    figure = cam_figure(face_rgb, [branch.activation_map(image) for branch in branches])
    written["cam"] = str(save_png(figure, out_dir / "cam.png"))
    if mae is not None:
        crop, lms = resize_faces(face_rgb[None], landmarks[None].astype(np.float32), mae.img_size)
        face = to_tensor(crop).to(device)  # (1, 3, H, W) at the MAE's size
        lm = torch.from_numpy(lms).to(device)  # (1, 68, 2)
        masks, recons = part_reconstructions(mae, face, lm, ratio, variant)
        figure = reconstruction_figure(face, masks, recons, mae.patch_size)
        written["reconstruction"] = str(save_png(figure, out_dir / "reconstruction.png"))
    return written
