"""VGG16-BN model family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_prune.models.pretrained import PRETRAINED_URLS, download_state_dict, load_weights, read_state_dict
from lightning_prune.models.vgg import VGG, VGG16_CHANNELS, scaled_channels

__all__ = ["VGG", "VGG16_CHANNELS", "PRETRAINED_URLS", "scaled_channels", "vgg16_bn"]


def vgg16_bn(
    num_classes: int = 10,
    channels: Sequence[int] | None = None,
    pretrained: bool | str | Path = False,
    classifier_width: int = 512,
) -> VGG:
    """VGG16-BN; ``pretrained=True`` downloads chenyaofo's weights, a path loads a local state dict."""
    model = VGG(num_classes=num_classes, channels=channels, classifier_width=classifier_width)
    if pretrained is True:
        load_weights(model, download_state_dict(num_classes), "pretrained=True")
    elif pretrained:
        load_weights(model, read_state_dict(pretrained), f"pretrained={pretrained}")
    return model
