"""Mapping Network of the second stage (paper §3.2.2, Fig. 2-b).

ResNet-18 stem + first three residual stages → multi-scale features brought to one size and
concatenated → three convolutions that produce a 56×56×3 "mapped face" (trained with MSE towards the
stage-1 MAE reconstruction of the input) → a fully connected layer that classifies real / fake
(trained with BCE). The network is a plain ``nn.Module``; the losses and the meta-learning step live in
``deepfakemae.metalearning``.

Shapes for a 224×224 input (stride in brackets)::

    stem   conv1+bn1+relu+maxpool   64 × 56 × 56   (4)
    layer1                          64 × 56 × 56   (4)
    layer2                         128 × 28 × 28   (8)
    layer3                         256 × 14 × 14   (16)
    fused  (bilinear → 56×56, cat) 448 × 56 × 56
    mapper 1×1 → 3×3 → 3×3 convs     3 × 56 × 56   "mapped face" (448 → 128 → 64 → 3)
    head   GAP(fused) → FC           1             logit (fake = 1)
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepfakemae.models.pretrained import create_resnet18

ClassifierInput = Literal["features", "mapped", "both"]

_STAGE_CHANNELS = (64, 128, 256)  # ResNet-18 layer1, layer2, layer3


class MappingNetwork(nn.Module):
    """ResNet-18 based face mapper + binary classifier.

    Args:
        pretrained: initialise the ResNet-18 part from timm's ImageNet weights (needs internet or a
            populated Hugging Face cache; see :func:`create_resnet18`). ``False`` gives a random
            init (demo, tests).
        map_size: side of the fused feature map and of the mapped face (paper: 56).
        hidden_channels: output channels of the first mapping convolution (the second has half).
        classifier_input: what the final FC layer sees.

            * ``"features"`` (default): global-average-pooled fused multi-scale features (448-d).
              The fused features are shared by the mapper, so the MSE towards the MAE reconstruction
              shapes exactly the representation the classifier reads, while the classifier still sees
              all 448 channels instead of a 3-channel image.
            * ``"mapped"``: the flattened mapped face (3·56·56), i.e. the FC literally sits on the
              mapped face.
            * ``"both"``: concatenation of the two.
        dropout: dropout before the FC layer.

    The mapped face has no output activation: it lives in the same ImageNet-normalised pixel space as
    the MAE's reconstruction target (``deepfakemae.constants.IMAGENET_MEAN/STD``), resized to
    ``map_size``. Forward returns ``(logit (B,), mapped (B, 3, map_size, map_size))``. The input side
    must be a multiple of 16, the stride of layer3 (112 and 224 are tested); the three stage outputs
    are resized bilinearly to ``map_size`` whatever the input size.
    """

    def __init__(
        self,
        pretrained: bool = False,
        map_size: int = 56,
        hidden_channels: int = 128,
        classifier_input: ClassifierInput = "features",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if classifier_input not in get_args(ClassifierInput):
            raise ValueError(
                f"models/mapping_network.py: classifier_input={classifier_input!r}; "
                f"use one of {get_args(ClassifierInput)}"
            )
        self.map_size = map_size
        self.classifier_input = classifier_input

        resnet = create_resnet18(pretrained)
        # stem: first convolution of ResNet-18 (with its BN, ReLU and max-pool), stride 4
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool)
        # first three residual stages; layer4 / global_pool / fc of the ResNet are dropped
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3

        fused_channels = sum(_STAGE_CHANNELS)  # 448
        # three convolutions: 1×1 channel reduction of the 448-ch concat, then two 3×3 (the last
        # one linear). A 3×3 first layer at 56×56 would cost ~4× more MACs than the whole mapper.
        self.mapper = nn.Sequential(
            nn.Conv2d(fused_channels, hidden_channels, 1, bias=False),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, hidden_channels // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden_channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels // 2, 3, 3, padding=1),
        )

        fc_in = {
            "features": fused_channels,
            "mapped": 3 * map_size * map_size,
            "both": fused_channels + 3 * map_size * map_size,
        }[classifier_input]
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fc_in, 1)

    def forward_features(self, x: Tensor) -> Tensor:
        """Fused multi-scale features: (B, 3, H, W) → (B, 448, map_size, map_size)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"models/mapping_network.py: expected images (B, 3, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(
                f"models/mapping_network.py: input side must be a multiple of 16, got {tuple(x.shape[-2:])}; "
                "resize the face crops (e.g. data.image_size=224)"
            )
        x = self.stem(x)  # (B, 64, H/4, W/4)
        f1 = self.layer1(x)  # (B, 64, H/4, W/4)
        f2 = self.layer2(f1)  # (B, 128, H/8, W/8)
        f3 = self.layer3(f2)  # (B, 256, H/16, W/16)
        size = (self.map_size, self.map_size)
        feats = [
            f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            for f in (f1, f2, f3)
        ]
        return torch.cat(feats, dim=1)  # (B, 448, S, S)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) → (logit (B,), mapped face (B, 3, S, S)), S = ``map_size``."""
        fused = self.forward_features(x)  # (B, 448, S, S)
        mapped = self.mapper(fused)  # (B, 3, S, S)
        parts = []
        if self.classifier_input in ("features", "both"):
            parts.append(fused.mean(dim=(2, 3)))  # (B, 448)
        if self.classifier_input in ("mapped", "both"):
            parts.append(mapped.flatten(1))  # (B, 3*S*S)
        z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        logit = self.fc(self.dropout(z)).squeeze(1)  # (B,)
        return logit, mapped
