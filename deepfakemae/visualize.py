"""Pictures for people: reconstruction grids, ROC curves, activation overlays; and logging them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from deepfakemae.constants import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from lightning.pytorch import Trainer


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (B,3,H,W) tensor → (B,H,W,3) uint8 RGB."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = (images.detach().float() * std + mean).clamp(0, 1) * 255
    return pixels.round().byte().permute(0, 2, 3, 1).cpu().numpy()


def mask_to_pixels(mask: torch.Tensor, img_size: int, patch_size: int) -> np.ndarray:
    """(B,L) bool patch mask → (B,H,W) bool pixel mask."""
    grid = img_size // patch_size
    m = mask.detach().view(-1, grid, grid).float()
    m = m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    return m.bool().cpu().numpy()


def reconstruction_grid(original: torch.Tensor, mask: torch.Tensor, reconstruction: torch.Tensor,
                        patch_size: int, max_rows: int = 8) -> np.ndarray:
    """Rows of ``original | masked | reconstruction`` as one uint8 RGB image."""
    n = min(max_rows, original.shape[0])
    orig, recon = to_uint8(original[:n]), to_uint8(reconstruction[:n])
    pix = mask_to_pixels(mask[:n], original.shape[-1], patch_size)
    masked = orig.copy()
    masked[pix] = (masked[pix] * 0.25 + np.array([40, 40, 40]) * 0.75).astype(np.uint8)
    rows = [np.concatenate([o, m, r], axis=1) for o, m, r in zip(orig, masked, recon, strict=True)]
    return np.concatenate(rows, axis=0)


def heatmap_overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0,1] heat map (any size) over an RGB uint8 image with the JET colour map."""
    heat = cv2.resize(heat.astype(np.float32), image_rgb.shape[1::-1])
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    colour = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET),
                          cv2.COLOR_BGR2RGB)
    return (image_rgb * (1 - alpha) + colour * alpha).astype(np.uint8)


def text_strip(width: int, texts: list[str], height: int = 22, scale: float = 0.45
               ) -> np.ndarray:
    """A dark (height, width, 3) uint8 strip with ``texts`` centred in equal-width cells."""
    strip = np.full((height, width, 3), 32, np.uint8)
    cell = width / max(1, len(texts))
    for i, text in enumerate(texts):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(i * cell + max(2, (cell - tw) / 2))
        cv2.putText(strip, text, (x, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (240, 240, 240), 1, cv2.LINE_AA)
    return strip


def face_strip(crops: np.ndarray, captions: list[str], side: int = 96) -> np.ndarray:
    """The faces of a video side by side, each resized to ``side`` px with its caption below.

    crops (N,S,S,3) uint8 RGB, one caption per face → (side + 20, N*side, 3) uint8 RGB.
    """
    if len(crops) != len(captions) or len(crops) == 0:
        raise ValueError(f"face_strip: {len(crops)} faces and {len(captions)} captions")
    faces = [cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA if c.shape[0] > side
                        else cv2.INTER_CUBIC) for c in crops]
    row = np.concatenate(faces, axis=1)
    return np.concatenate([row, text_strip(row.shape[1], captions, height=20, scale=0.38)],
                          axis=0)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """Plot ROC curves ``{name: (fpr, tpr, auc)}`` and return the figure as an RGB uint8 array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def _figure_rgb(fig, title: str = "") -> np.ndarray:
    """A matplotlib figure (with ``title`` as its suptitle) as RGB uint8; the figure is closed."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def box_grid(panels: dict[tuple[str, str], dict[str, np.ndarray]], rows: list[str],
             cols: list[str], ylabel: str, title: str = "") -> np.ndarray:
    """A grid of box plots with their points: ``panels[(row, col)]`` maps a box label to its
    values (e.g. ``{"real": errors, "fake": errors}``). Returns the figure as RGB uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols) + 0.6,
                                                            2.3 * len(rows) + 0.6),
                             dpi=100, squeeze=False)
    rng = np.random.default_rng(0)  # point jitter only
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            boxes = panels.get((row, col), {})
            labels = list(boxes)
            values = [np.asarray(boxes[k], np.float64) for k in labels]
            if values:
                ax.boxplot(values, showfliers=False, widths=0.5)
                for n, v in enumerate(values, 1):
                    ax.plot(n + rng.uniform(-0.12, 0.12, v.size), v, ".", markersize=4,
                            alpha=0.7, color="C3" if "fake" in labels[n - 1] else "C0")
                ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{row}\n{ylabel}", fontsize=8)
    return _figure_rgb(fig, title)


def sensitivity_figure(curves: dict[str, dict[str, list[tuple[int, object]]]], ylabel: str,
                       title: str = "") -> np.ndarray:
    """AUC against artifact strength: one panel per branch (``curves`` keys, in order), one
    line per method with its interval as a band. ``curves[branch][method]`` is a list of
    ``(strength, interval)`` with ``interval.value/.low/.high`` in [0, 1] (plotted as %); a
    chance line at 50. Returns the figure as RGB uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    branches = list(curves)
    fig, axes = plt.subplots(1, max(len(branches), 1), figsize=(3.6 * max(len(branches), 1) + 0.4,
                                                                  3.6), dpi=100, squeeze=False)
    strengths = sorted({k for lines in curves.values() for points in lines.values()
                        for k, _ in points})
    for ax, branch in zip(axes[0], branches, strict=False):
        for n, (method, points) in enumerate(curves[branch].items()):
            if not points:
                continue
            x = np.array([k for k, _ in points], np.float64)
            v, lo, hi = (np.array([getattr(iv, a) for _, iv in points], np.float64) * 100
                         for a in ("value", "low", "high"))
            ax.fill_between(x, lo, hi, color=f"C{n}", alpha=0.15, linewidth=0)
            ax.plot(x, v, "o-", color=f"C{n}", label=method, markersize=4)
        ax.axhline(50, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(branch, fontsize=9)
        ax.set_xlabel("artifact strength", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xticks(strengths)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(loc="lower right", fontsize=7)
    return _figure_rgb(fig, title)


def png_bytes(image_rgb: np.ndarray) -> bytes:
    """An RGB uint8 image encoded as PNG (for atomic writes: `faces.files.atomic_write`)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("deepfakemae/visualize.py: PNG encoding failed")
    return buf.tobytes()


def save_png(image_rgb: np.ndarray, path: str | Path) -> Path:
    """Write an RGB uint8 image as PNG (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    return path


def local_log_dir(trainer: Trainer) -> Path:
    """``trainer.log_dir`` without its broadcast, so rank 0 alone may call it under DDP."""
    if trainer.loggers:
        logger = trainer.loggers[0]
        kind = type(logger).__name__
        path = logger.log_dir if kind in ("TensorBoardLogger", "CSVLogger") else logger.save_dir
        if path is not None:
            return Path(path)
    return Path(trainer.default_root_dir)


def log_image(trainer: Trainer, key: str, image_rgb: np.ndarray, step: int) -> None:
    """Send an image to every logger that takes images and save it as PNG under the log dir."""
    for logger in trainer.loggers:
        name = type(logger).__name__
        if "Wandb" in name:
            logger.log_image(key=key, images=[image_rgb], step=step)
        elif "TensorBoard" in name:
            logger.experiment.add_image(key, image_rgb, step, dataformats="HWC")
    if trainer.is_global_zero:
        save_png(image_rgb, local_log_dir(trainer) / "figures" / f"{key.replace('/', '_')}_{step:07d}.png")


class PictureQueue:
    """LightningModule mixin: pictures a step makes wait here, as ``(key, RGB image, step)``,
    until :class:`deepfakemae.callbacks.PictureFiles` logs them (modules write no files)."""

    def queue_picture(self, key: str, image_rgb: np.ndarray, step: int) -> None:
        """Keep ``image_rgb`` to be logged under ``key`` at ``step``."""
        self.__dict__.setdefault("_pictures", []).append((key, image_rgb, step))

    def take_pictures(self) -> list[tuple[str, np.ndarray, int]]:
        """The queued pictures, oldest first; the queue is emptied."""
        return self.__dict__.pop("_pictures", [])
