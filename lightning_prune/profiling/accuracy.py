"""Top-1 / top-5 accuracy of a plain module over a dataloader (torchmetrics)."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> tuple[float, float]:
    """Top-1 and top-5 in percent; the model is put in eval mode and restored afterwards."""
    # Local only: under DDP this runs on one rank, and a synced compute() would wait for the others forever.
    local = {"average": "micro", "sync_on_compute": False}
    top1 = MulticlassAccuracy(num_classes, top_k=1, **local).to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), **local).to(device)
    was_training = model.training
    model.eval()
    try:
        for x, y in islice(batches, max_batches):
            logits = model(x.to(device))
            y = y.to(device)
            top1.update(logits, y)
            top5.update(logits, y)
    finally:
        model.train(was_training)
    return 100 * float(top1.compute()), 100 * float(top5.compute())
