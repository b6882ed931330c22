"""VGG16-BN for 32x32 inputs, laid out exactly like chenyaofo/pytorch-cifar-models (their checkpoints load
with ``strict=True``); ``channels`` lets channel pruning rebuild a narrower copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

VGG16_CHANNELS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# A 2x2 max-pool follows the last conv of each of the five blocks (0-based conv indices).
POOL_AFTER: frozenset[int] = frozenset({1, 3, 6, 9, 12})


def scaled_channels(width_multiplier: float) -> list[int]:
    """VGG16 widths times ``width_multiplier`` (at least 1 channel each): tiny models for tests."""
    assert width_multiplier > 0, f"width_multiplier must be > 0, got {width_multiplier}"
    return [max(1, round(c * width_multiplier)) for c in VGG16_CHANNELS]


class VGG(nn.Module):
    """Conv-BN-ReLU stack with five max-pools, then a 3-layer MLP classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        channels: Sequence[int] | None = None,
        classifier_width: int = 512,
    ) -> None:
        super().__init__()
        channels = list(VGG16_CHANNELS if channels is None else channels)
        if len(channels) != len(VGG16_CHANNELS) or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels must list {len(VGG16_CHANNELS)} positive conv widths, got {channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.channels = [int(c) for c in channels]
        self.classifier_width = classifier_width
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(self.channels):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2, 2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch, classifier_width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(classifier_width, classifier_width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(classifier_width, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: Kaiming-normal convs, N(0, 0.01) linears, unit BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def conv_layers(self) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
        """(name, conv, following BN) for the 13 convs, in order: what channel surgery edits."""
        mods = list(self.features.named_children())
        return [(f"features.{name}", m, mods[i + 1][1])
                for i, (name, m) in enumerate(mods) if isinstance(m, nn.Conv2d)]


def _weight(state: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    return state.get(f"{name}.weight", state.get(f"{name}.weight_orig"))


def architecture_of(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``num_classes``, ``channels`` and ``classifier_width`` read off a VGG state dict's shapes."""
    channels, index = [], 0
    for conv in range(len(VGG16_CHANNELS)):
        w = _weight(state, f"features.{index}")
        if w is None:
            raise ValueError(f"not a lightning_prune VGG16-BN state dict (no features.{index}.weight)")
        channels.append(int(w.shape[0]))
        index += 4 if conv in POOL_AFTER else 3  # conv, BN, ReLU, and a max-pool after each block
    first, last = _weight(state, "classifier.0"), _weight(state, "classifier.6")
    if first is None or last is None:
        raise ValueError("not a lightning_prune VGG16-BN state dict (no classifier.0/6 weights)")
    return {"num_classes": int(last.shape[0]), "channels": channels, "classifier_width": int(first.shape[0])}
