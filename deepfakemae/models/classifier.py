"""Finetuning Network of the second stage (paper §3.2.1, Fig. 2-a).

The stage-1 MAE encoder sees every patch of each frame (no masking); the last encoder layer (after
the encoder's final norm) is pooled to one vector per frame, the vectors of the T frames of a clip
(paper: 5) are averaged, and a head (LayerNorm + Linear) gives two-class logits for cross-entropy.

Pooling: ``"mean"`` (default) averages the patch tokens. In MAE pre-training the loss is on patch
reconstructions only, so the CLS token receives no direct training signal and is not a trained
summary; the patch tokens are what the reconstruction task shaped, and global average pooling is
also what the MAE authors use for fine-tuning. ``"cls"`` takes the CLS token instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor, nn

Pooling = Literal["mean", "cls"]
EncoderFn = Callable[[Tensor], Tensor]


class FinetuneClassifier(nn.Module):
    """MAE encoder + frame pooling + clip average + 2-class head.

    Args:
        encoder: a module with ``forward_encoder(imgs, mask=None)`` returning tokens
            (B, 1+L, D) with the CLS token first (a tuple is accepted: its first item is used).
            It is registered as a submodule, so its parameters are fine-tuned.
        embed_dim: token width D; read from ``encoder.embed_dim`` when omitted.
        pooling: ``"mean"`` of patch tokens (default) or ``"cls"``.
        num_classes: logits per clip (2: real / fake, cross-entropy).
        head_norm: LayerNorm before the linear layer.
        dropout: dropout before the linear layer.
        encoder_fn: alternative to ``forward_encoder``: ``encoder_fn(imgs) -> tokens (B, 1+L, D)``.
            Its parameters are only trained if they belong to ``encoder``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int | None = None,
        pooling: Pooling = "mean",
        num_classes: int = 2,
        head_norm: bool = True,
        dropout: float = 0.0,
        encoder_fn: EncoderFn | None = None,
    ) -> None:
        super().__init__()
        if pooling not in get_args(Pooling):
            raise ValueError(f"models/classifier.py: pooling={pooling!r}; use one of {get_args(Pooling)}")
        if encoder_fn is None and not hasattr(encoder, "forward_encoder"):
            raise TypeError(
                "models/classifier.py: encoder has no forward_encoder(imgs, mask=None); "
                "pass an MAE from deepfakemae.models.mae or give encoder_fn"
            )
        dim = embed_dim if embed_dim is not None else getattr(encoder, "embed_dim", None)
        if dim is None:
            raise ValueError("models/classifier.py: cannot infer embed_dim from the encoder; pass embed_dim")
        self.encoder = encoder
        self.encoder_fn = encoder_fn
        self.pooling = pooling
        self.embed_dim = int(dim)
        self.head = nn.Sequential(
            nn.LayerNorm(self.embed_dim) if head_norm else nn.Identity(),
            nn.Dropout(dropout),
            nn.Linear(self.embed_dim, num_classes),
        )
        nn.init.trunc_normal_(self.head[-1].weight, std=0.02)
        nn.init.zeros_(self.head[-1].bias)

    def _tokens(self, imgs: Tensor) -> Tensor:
        out = self.encoder_fn(imgs) if self.encoder_fn is not None else self.encoder.forward_encoder(imgs, mask=None)
        tokens = out[0] if isinstance(out, (tuple, list)) else out
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(
                f"models/classifier.py: encoder returned {tuple(tokens.shape)}, expected (N, 1+L, {self.embed_dim})"
            )
        return tokens

    def forward_features(self, clips: Tensor) -> Tensor:
        """Per-frame pooled features: clips (B, T, 3, H, W) or frames (B, 3, H, W) → (B, T, D)."""
        if clips.ndim == 4:
            clips = clips.unsqueeze(1)  # (B, 1, 3, H, W)
        if clips.ndim != 5:
            raise ValueError(f"models/classifier.py: expected (B, T, 3, H, W), got {tuple(clips.shape)}")
        b, t = clips.shape[:2]
        tokens = self._tokens(clips.flatten(0, 1))  # (B*T, 1+L, D)
        feats = tokens[:, 1:].mean(dim=1) if self.pooling == "mean" else tokens[:, 0]  # (B*T, D)
        return feats.reshape(b, t, -1)

    def forward(self, clips: Tensor) -> Tensor:
        """Clip logits (B, num_classes): head of the T-frame average of pooled features."""
        return self.head(self.forward_features(clips).mean(dim=1))
