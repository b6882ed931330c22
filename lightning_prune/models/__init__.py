"""VGG16-BN model family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning_prune.models.pretrained import PRETRAINED_URLS, download_state_dict, load_weights, read_state_dict
from lightning_prune.models.vgg import VGG, VGG16_CHANNELS, architecture_of, scaled_channels

__all__ = ["VGG", "VGG16_CHANNELS", "PRETRAINED_URLS", "architecture_of", "scaled_channels", "vgg16_bn",
           "vgg_from_state"]


def vgg16_bn(
    num_classes: int = 10,
    channels: Sequence[int] | None = None,
    pretrained: bool | str | Path = False,
    classifier_width: int = 512,
) -> VGG:
    """VGG16-BN; ``pretrained=True`` downloads chenyaofo's weights, a path loads a local state dict.

    A path's widths win over ``channels``: a channel-pruned checkpoint rebuilds its narrow network.
    """
    if pretrained is True or not pretrained:
        model = VGG(num_classes=num_classes, channels=channels, classifier_width=classifier_width)
        if pretrained is True:
            load_weights(model, download_state_dict(num_classes), "pretrained=True")
        return model
    return vgg_from_state(num_classes, read_state_dict(pretrained), str(pretrained))


def vgg_from_state(num_classes: int, state: dict, source: str) -> VGG:
    """A VGG of the widths the state dict's shapes give, with its weights (``source`` names it in errors)."""
    try:
        arch = architecture_of(state)
    except ValueError as err:
        from lightning_prune.errors import ConfigError

        raise ConfigError(f"model.pretrained: {source}: {err}") from err
    model = VGG(num_classes=num_classes, channels=arch["channels"], classifier_width=arch["classifier_width"])
    load_weights(model, state, f"pretrained={source}")
    return model
