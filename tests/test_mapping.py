"""Stage-2 models: MappingNetwork shapes/gradients and FinetuneClassifier pooling/averaging."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from deepfakemae.models.classifier import FinetuneClassifier
from deepfakemae.models.mapping_network import MappingNetwork


@pytest.fixture(scope="module")
def mapping_net() -> MappingNetwork:
    torch.manual_seed(0)
    return MappingNetwork(pretrained=False)


@pytest.mark.parametrize("size", [112, 224])
def test_mapping_shapes(mapping_net: MappingNetwork, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    fused = mapping_net.forward_features(x)
    assert fused.shape == (2, 448, 56, 56)
    logit, mapped = mapping_net(x)
    assert logit.shape == (2,)
    assert mapped.shape == (2, 3, 56, 56)
    assert torch.isfinite(logit).all() and torch.isfinite(mapped).all()


def test_mapping_keeps_three_stages_only(mapping_net: MappingNetwork) -> None:
    names = {n.split(".")[0] for n, _ in mapping_net.named_parameters()}
    assert names == {"stem", "layer1", "layer2", "layer3", "mapper", "fc"}
    assert mapping_net.layer3[-1].conv2.out_channels == 256


@pytest.mark.parametrize("classifier_input, fc_in", [("mapped", 3 * 56 * 56), ("both", 448 + 3 * 56 * 56)])
def test_mapping_classifier_inputs(classifier_input: str, fc_in: int) -> None:
    net = MappingNetwork(classifier_input=classifier_input)
    assert net.fc.in_features == fc_in
    logit, mapped = net(torch.randn(2, 3, 64, 64))
    assert logit.shape == (2,) and mapped.shape == (2, 3, 56, 56)


def test_mapping_losses_reach_backbone() -> None:
    torch.manual_seed(0)
    net = MappingNetwork(map_size=28)
    logit, mapped = net(torch.randn(2, 3, 64, 64))
    mapped.pow(2).mean().backward(retain_graph=True)  # MSE-like term alone must train the ResNet stages
    assert net.stem[0].weight.grad is not None and net.stem[0].weight.grad.abs().sum() > 0
    assert net.fc.weight.grad is None  # the mapper path does not touch the classifier
    net.zero_grad()
    logit.sum().backward()
    # (timm zero-inits the last BN of each block, so check the shortcut conv)
    assert net.layer3[0].downsample[0].weight.grad.abs().sum() > 0


def test_mapping_rejects_bad_input(mapping_net: MappingNetwork) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        mapping_net(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="classifier_input"):
        MappingNetwork(classifier_input="pixels")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- FinetuneClassifier
class _TokenEncoder(nn.Module):
    """Deterministic stand-in with the MAE encoder interface: CLS = 0, patch tokens = linear(patches)."""

    embed_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16 * 16, self.embed_dim)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        assert mask is None
        n = imgs.shape[0]
        patches = imgs.unfold(2, 16, 16).unfold(3, 16, 16)  # (N, 3, h, w, 16, 16)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, 3 * 16 * 16)
        tokens = self.proj(patches)  # (N, L, D)
        cls = torch.full((n, 1, self.embed_dim), 7.0)
        return torch.cat([cls, tokens], dim=1)


def _mae_or_none():
    try:
        from deepfakemae.models.mae import create_mae
    except ImportError:
        return None
    return create_mae


def test_classifier_mean_pool_and_clip_average() -> None:
    torch.manual_seed(0)
    enc = _TokenEncoder()
    clf = FinetuneClassifier(enc, pooling="mean")
    clips = torch.randn(3, 5, 3, 32, 32)
    feats = clf.forward_features(clips)
    assert feats.shape == (3, 5, 8)
    expected = enc.forward_encoder(clips[1, 2:3])[:, 1:].mean(1)[0]
    torch.testing.assert_close(feats[1, 2], expected)
    logits = clf(clips)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, clf.head(feats.mean(1)))
    # frame order inside a clip does not matter
    torch.testing.assert_close(clf(clips.flip(1)), logits)
    # single frames (B, 3, H, W) are clips with T = 1
    assert clf(clips[:, 0]).shape == (3, 2)


def test_classifier_cls_pool_and_training_reaches_encoder() -> None:
    enc = _TokenEncoder()
    clf = FinetuneClassifier(enc, pooling="cls")
    feats = clf.forward_features(torch.randn(2, 5, 3, 32, 32))
    torch.testing.assert_close(feats, torch.full((2, 5, 8), 7.0))
    clf_mean = FinetuneClassifier(enc)
    loss = nn.functional.cross_entropy(clf_mean(torch.randn(2, 5, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0


def test_classifier_errors() -> None:
    with pytest.raises(TypeError, match="forward_encoder"):
        FinetuneClassifier(nn.Linear(2, 2), embed_dim=2)
    with pytest.raises(ValueError, match="pooling"):
        FinetuneClassifier(_TokenEncoder(), pooling="max")  # type: ignore[arg-type]
    clf = FinetuneClassifier(_TokenEncoder())
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        clf(torch.randn(3, 32, 32))


def test_classifier_with_project_mae() -> None:
    create_mae = _mae_or_none()
    if create_mae is None:
        pytest.skip("deepfakemae/models/mae.py not present yet")
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch16_112")
    clf = FinetuneClassifier(mae)
    clips = torch.randn(2, 2, 3, 112, 112)
    logits = clf(clips)
    assert logits.shape == (2, 2)
    tokens = mae.forward_encoder(clips[0, :1], None)[0]  # (1, 1+49, 192)
    torch.testing.assert_close(clf.forward_features(clips)[0, 0], tokens[0, 1:].mean(0))
    logits.sum().backward()
    assert mae.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_imagenet_weights_offline_error_names_the_switch(tmp_path) -> None:
    """Offline with an empty Hugging Face cache: a clear error, not a stack of hub internals."""
    code = ("from deepfakemae.models.mapping_network import MappingNetwork\n"
            "from deepfakemae.models.pretrained import PretrainedWeightsError\n"
            "try:\n    MappingNetwork(pretrained=True)\n"
            "except PretrainedWeightsError as exc:\n    print(exc)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ImageNet weights for ResNet-18" in out.stdout
    assert "--model.init_args.pretrained_backbone false" in out.stdout
