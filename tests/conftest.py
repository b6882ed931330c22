"""Shared fixtures: tiny VGGs and tiny data so the suite stays fast on 2 CPU cores (helpers: tests/helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_prune.models import VGG, scaled_channels
from tests.helpers import SUBSET_ENV, TINY_CLASSIFIER, TINY_WIDTH


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # one per worker under `make test`
    torch.manual_seed(0)


@pytest.fixture
def tiny_channels() -> list[int]:
    return scaled_channels(TINY_WIDTH)


@pytest.fixture
def tiny_model(tiny_channels) -> VGG:
    return VGG(num_classes=10, channels=tiny_channels, classifier_width=TINY_CLASSIFIER)


@pytest.fixture
def tiny_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]


@pytest.fixture
def cifar10_subset() -> Path:
    """The real CIFAR-10 subset that CI points to; tests using it skip elsewhere."""
    path = os.environ.get(SUBSET_ENV)
    if not path:
        pytest.skip(f"{SUBSET_ENV} is not set")
    return Path(path)
