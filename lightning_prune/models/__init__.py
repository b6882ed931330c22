"""VGG16-BN model family."""

from lightning_prune.models.pretrained import PRETRAINED_URLS, vgg16_bn, vgg_from_state
from lightning_prune.models.vgg import VGG, scaled_channels

__all__ = ["VGG", "PRETRAINED_URLS", "scaled_channels", "vgg16_bn", "vgg_from_state"]
