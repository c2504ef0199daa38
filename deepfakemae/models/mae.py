"""Masked autoencoder ViT for stage 1 (paper §3.1), in the layout of MAE's ``models_mae.py``.

Encoder: timm ``PatchEmbed`` → + fixed 2-D sin-cos positions → drop masked patches → CLS →
timm ``Block``s → LayerNorm. Decoder: linear embed → mask tokens at masked positions (original
order restored) → + fixed sin-cos positions → ``Block``s → LayerNorm → per-patch pixel prediction.
Loss: MSE on masked patches only (per-patch mean, then mean over masked patches), optionally on
per-patch normalised pixels (``norm_pix_loss``).

Uneven mask counts: facial-part masking drops a different number of patches per sample. Visible
tokens are gathered into a padded (B, 1+Vmax, D) layout with a key-padding mask, so attention
never sees padded keys and each sample's result equals running it alone. Two exact modes:

* ``uneven="packed"`` (default): per-token layers (LayerNorm, qkv, proj, MLP) run on the packed
  visible tokens only (no compute spent on padding); only the attention core uses the padded
  layout. Requires drop_path == 0 while training (true for MAE pre-training; else ``padded``).
* ``uneven="padded"``: every layer runs on the padded tensor; attention gets the boolean
  key-padding mask through timm ``Block.forward(x, attn_mask=...)``.

When all samples keep the same number of patches there is no padding and no attention mask.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

__all__ = [
    "MaskedAutoencoderViT",
    "TokenLayout",
    "sincos_pos_embed_2d",
    "register_preset",
    "create_mae",
    "list_presets",
]


# --------------------------------------------------------------------------------------------
# Positional embeddings
# --------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos (M,) → (M, dim): [sin(pos·ω_k), cos(pos·ω_k)], ω_k = 10000^(-k / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], 1)


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos table, (1, [1 +] grid², dim) float32, raster order, CLS slot zeros.

    The first half of the channels encodes the column (x) index, the second half the row (y)
    index — the same layout as MAE's released checkpoints, so loaded weights see the positions
    they were trained with.
    """
    if dim % 4:
        raise ValueError(f"deepfakemae/models/mae.py: sin-cos embedding dim must be divisible by 4, got {dim}")
    idx = torch.arange(grid_size)
    rows = idx.repeat_interleave(grid_size)  # (L,) y index of each raster token
    cols = idx.repeat(grid_size)  # (L,) x index
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], 1)  # (L, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], 0)
    return emb.float()[None]


# --------------------------------------------------------------------------------------------
# Token layout for dropping masked patches
# --------------------------------------------------------------------------------------------
class TokenLayout(NamedTuple):
    """How visible patches were gathered for the encoder (None fields = full unmasked face).

    ids_shuffle (B, L): visible patch ids ascending, then masked ids ascending.
    ids_restore (B, L): inverse permutation of ``ids_shuffle``.
    valid (B, Vmax) bool: which of the first Vmax slots hold a visible patch; None when every
    sample keeps the same count (no padding).
    """

    ids_shuffle: torch.Tensor | None
    ids_restore: torch.Tensor | None
    valid: torch.Tensor | None


def _layout_from_mask(mask: torch.Tensor) -> tuple[TokenLayout, int]:
    """mask (B, L) bool, True = masked → (layout, Vmax)."""
    ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # (B, L) visible first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    n_keep = (~mask).sum(1)  # (B,)
    v_max = int(n_keep.max())
    if bool((n_keep == v_max).all()):
        return TokenLayout(ids_shuffle, ids_restore, None), v_max
    valid = torch.arange(v_max, device=mask.device)[None] < n_keep[:, None]  # (B, Vmax)
    return TokenLayout(ids_shuffle, ids_restore, valid), v_max


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class MaskedAutoencoderViT(nn.Module):
    """Masked autoencoder with a ViT backbone (parameter names follow MAE / timm ViT)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
        drop_path_rate: float = 0.0,
        uneven: str = "packed",
    ) -> None:
        super().__init__()
        if uneven not in ("packed", "padded"):
            raise ValueError(f"deepfakemae/models/mae.py: uneven must be 'packed' or 'padded', got {uneven!r}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.decoder_embed_dim = embed_dim, decoder_embed_dim
        self.norm_pix_loss, self.uneven = norm_pix_loss, uneven

        # encoder ---------------------------------------------------------------------------
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = img_size // patch_size
        self.num_patches = self.patch_embed.num_patches  # L
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid_size), persistent=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)

        # decoder ---------------------------------------------------------------------------
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.grid_size), persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        self._enable_fused_attention()
        self._init_weights()

    # -- setup -------------------------------------------------------------------------------
    def _enable_fused_attention(self) -> None:
        """Use F.scaled_dot_product_attention in every block (timm may default it off via env)."""
        for blk in [*self.blocks, *self.decoder_blocks]:
            blk.attn.fused_attn = True

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on flattened patches
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- patches -----------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, L, p*p*C), channel-last within each patch (as MAE)."""
        p, g, c = self.patch_size, self.grid_size, self.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C) → (B, C, H, W)."""
        p, g, c = self.patch_size, self.grid_size, self.in_chans
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    # -- encoder -----------------------------------------------------------------------------
    def _check_mask(self, imgs: torch.Tensor, mask: torch.Tensor) -> None:
        if mask.dtype != torch.bool or mask.shape != (imgs.shape[0], self.num_patches):
            raise ValueError(
                "deepfakemae/models/mae.py: mask must be a bool tensor of shape "
                f"(B, {self.num_patches}), got {mask.dtype} {tuple(mask.shape)}"
            )
        if bool(mask.all(1).any()):
            raise ValueError("deepfakemae/models/mae.py: a sample has every patch masked; keep at least one visible")

    def forward_encoder(
        self, imgs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, TokenLayout]:
        """Encode visible patches.

        imgs (B, C, H, W); mask (B, L) bool, True = masked, or None for the full face (stage 2).
        Returns latent (B, 1 + Vmax, D) — CLS first, then visible patches in ascending patch
        order; slots past a sample's visible count (see ``layout.valid``) are padding — and the
        `TokenLayout` needed by the decoder.
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]  # (B, L, D)
        B, L, D = x.shape
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)  # (B, 1, D)
        if mask is None:
            layout = TokenLayout(None, None, None)
        else:
            self._check_mask(imgs, mask)
            layout, v_max = _layout_from_mask(mask)
            ids_keep = layout.ids_shuffle[:, :v_max]  # (B, Vmax)
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # (B, Vmax, D)
        x = torch.cat([cls, x], 1)  # (B, 1 + Vmax, D)

        if layout.valid is None:
            for blk in self.blocks:
                x = blk(x)
        else:
            key_valid = F.pad(layout.valid, (1, 0), value=True)  # (B, 1 + Vmax), CLS always valid
            if self.uneven == "packed" and not (self.training and self._has_drop_path()):
                x = self._blocks_packed(x, key_valid)
            else:
                attn_mask = key_valid[:, None, None, :]  # (B, 1, 1, N): True = attend
                for blk in self.blocks:
                    x = blk(x, attn_mask=attn_mask)
        return self.norm(x), layout

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Encoder features of the full unmasked face, (B, 1 + L, D) (stage 2 Finetuning Network)."""
        return self.forward_encoder(imgs, None)[0]

    def _has_drop_path(self) -> bool:
        return any(not isinstance(b.drop_path1, nn.Identity) for b in self.blocks)

    def _blocks_packed(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """Encoder blocks with per-token layers on packed tokens, attention on the padded layout.

        x (B, N, D) padded; key_valid (B, N) bool. Returns (B, N, D) with padded slots zero.
        """
        B, N, D = x.shape
        flat = key_valid.reshape(-1).nonzero().squeeze(1)  # (T,) positions of real tokens
        h = x.reshape(B * N, D).index_select(0, flat)  # (T, D) packed
        attn_mask = key_valid[:, None, None, :]  # (B, 1, 1, N)
        for blk in self.blocks:
            h = h + blk.ls1(self._attention_packed(blk.attn, blk.norm1(h), flat, B, N, attn_mask))
            h = h + blk.ls2(blk.mlp(blk.norm2(h)))
        return h.new_zeros(B * N, D).index_copy(0, flat, h).view(B, N, D)

    @staticmethod
    def _attention_packed(
        attn: nn.Module, h: torch.Tensor, flat: torch.Tensor, B: int, N: int, attn_mask: torch.Tensor
    ) -> torch.Tensor:
        """timm ``Attention`` on packed tokens: h (T, D) → (T, D); same ops as its forward."""
        T = h.shape[0]
        heads, hd = attn.num_heads, attn.head_dim
        gate_layer = getattr(attn, "gate", None)
        qkv = attn.qkv(h)  # (T, 3 * heads * hd)
        qkv = qkv.new_zeros(B * N, qkv.shape[1]).index_copy(0, flat, qkv)  # (B*N, 3*A) padded
        q, k, v = qkv.view(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
        )  # (B, heads, N, hd)
        o = o.transpose(1, 2).reshape(B * N, heads * hd).index_select(0, flat)  # (T, A)
        o = getattr(attn, "norm", nn.Identity())(o)
        if gate_layer is not None:
            o = o * gate_layer(h).sigmoid()
        return attn.proj_drop(attn.proj(o)).view(T, -1)

    # -- decoder -----------------------------------------------------------------------------
    def forward_decoder(self, latent: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        """latent (B, 1 + Vmax, D) → pixel predictions for every patch (B, L, p*p*C)."""
        x = self.decoder_embed(latent)  # (B, 1 + Vmax, Dd)
        B, n, Dd = x.shape
        L = self.num_patches
        if layout.ids_restore is not None:
            vis = x[:, 1:]  # (B, Vmax, Dd)
            mask_tok = self.mask_token.to(x.dtype)
            if layout.valid is not None:  # padded slots belong to masked patches
                vis = torch.where(layout.valid[..., None], vis, mask_tok)
            seq = torch.cat([vis, mask_tok.expand(B, L - vis.shape[1], Dd)], 1)  # (B, L, Dd) shuffled
            seq = torch.gather(seq, 1, layout.ids_restore[..., None].expand(-1, -1, Dd))  # unshuffle
            x = torch.cat([x[:, :1], seq], 1)  # (B, 1 + L, Dd)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]  # (B, L, p*p*C), CLS dropped

    # -- loss / forward ----------------------------------------------------------------------
    def _target(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch targets (B, L, P) plus per-patch mean and std (B, L, 1) used by norm_pix_loss."""
        target = self.patchify(imgs)
        mean = target.mean(-1, keepdim=True)
        std = (target.var(-1, keepdim=True) + 1e-6).sqrt()  # unbiased variance, as MAE
        return target, mean, std

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over masked patches: per-patch mean squared error, averaged over masked patches."""
        target, mean, std = self._target(imgs)
        if self.norm_pix_loss:
            target = (target - mean) / std
        per_patch = (pred.float() - target.float()).pow(2).mean(-1)  # (B, L)
        m = mask.float()
        return (per_patch * m).sum() / m.sum().clamp(min=1.0)

    def forward(
        self, imgs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (B, C, H, W), mask (B, L) bool (True = masked) → (loss, pred (B, L, P), mask)."""
        latent, layout = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(latent, layout)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask: torch.Tensor | None,
                    keep_visible: bool = True) -> torch.Tensor:
        """Reconstructed images (B, C, H, W) in the input's (ImageNet-normalised) space.

        imgs (B, C, H, W); mask (B, L) bool, True = masked, or None (nothing masked: the
        encoder sees every patch). ``keep_visible=True`` (MAE's own convention): predictions at
        masked positions pasted over the original image, visible patches are the input's
        pixels. ``keep_visible=False``: the decoder's output at every position (with
        ``mask=None`` the output of a decoder that never saw its input without mask tokens).
        With ``norm_pix_loss`` predictions are per-patch normalised and are mapped back with the
        mean and std of the *original* patch at that position (as MAE's visualisation does).
        """
        if mask is None:
            latent, layout = self.forward_encoder(imgs, None)
            pred = self.forward_decoder(latent, layout).float()  # (B, L, P)
            mask = torch.ones(imgs.shape[0], self.num_patches, dtype=torch.bool,
                              device=imgs.device)  # every position is a prediction
        else:
            pred = self.forward(imgs, mask)[1].float()  # (B, L, P)
        target, mean, std = self._target(imgs.float())
        if self.norm_pix_loss:
            pred = pred * std + mean
        out = torch.where(mask[..., None], pred, target) if keep_visible else pred
        return self.unpatchify(out).to(imgs.dtype)


# --------------------------------------------------------------------------------------------
# Presets (timm-style registry)
# --------------------------------------------------------------------------------------------
_PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, overwrite: bool = False, **config: Any) -> None:
    """Register ``name`` → `MaskedAutoencoderViT` keyword arguments."""
    if name in _PRESETS and not overwrite:
        raise ValueError(f"deepfakemae/models/mae.py: preset {name!r} exists; pass overwrite=True to replace it")
    _PRESETS[name] = dict(config)


def list_presets() -> list[str]:
    """Names of registered presets, sorted."""
    return sorted(_PRESETS)


def create_mae(name: str = "mae_vit_base_patch16", **overrides: Any) -> MaskedAutoencoderViT:
    """Build a preset, with keyword overrides (e.g. ``norm_pix_loss=True``)."""
    if name not in _PRESETS:
        raise KeyError(f"deepfakemae/models/mae.py: unknown MAE preset {name!r}; available: {list_presets()}")
    model = MaskedAutoencoderViT(**{**_PRESETS[name], **overrides})
    model.preset = name  # recorded so stage-2 checkpoints can rebuild the architecture
    return model


# paper configs: ViT-B/16 encoder at 224 (§4.1 gives patch 16 and 224; the ViT-B size is ours),
# MAE's 512-d / 8-block decoder
register_preset(
    "mae_vit_base_patch16", img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
    decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
)
# CPU-trainable: demo and smoke runs (7 × 7 grid)
register_preset(
    "mae_vit_tiny_patch16_112", img_size=112, patch_size=16, embed_dim=192, depth=4, num_heads=3,
    decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4, mlp_ratio=4.0,
)
# unit tests (8 × 8 grid)
register_preset(
    "mae_vit_micro", img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4,
    decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=4, mlp_ratio=4.0,
)
