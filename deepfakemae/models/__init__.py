"""Plain ``nn.Module`` models (no Lightning, no I/O)."""

from deepfakemae.models.mae import (
    LoadReport,
    MaskedAutoencoderViT,
    TokenLayout,
    create_mae,
    list_presets,
    load_timm_mae_encoder,
    register_preset,
    sincos_pos_embed_2d,
)

__all__ = [
    "LoadReport",
    "MaskedAutoencoderViT",
    "TokenLayout",
    "create_mae",
    "list_presets",
    "load_timm_mae_encoder",
    "register_preset",
    "sincos_pos_embed_2d",
]
