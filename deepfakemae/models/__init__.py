"""Plain ``nn.Module`` models (no Lightning); weight downloads and checkpoint reads live in
``pretrained``."""

from deepfakemae.models.mae import (
    MaskedAutoencoderViT,
    TokenLayout,
    create_mae,
    list_presets,
    register_preset,
    sincos_pos_embed_2d,
)
from deepfakemae.models.pretrained import LoadReport, load_timm_mae_encoder

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
