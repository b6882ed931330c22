"""Prune VGG16-BN on CIFAR with PyTorch Lightning and measure what pruning buys."""

__version__ = "0.1.0"
