"""The reference the cached sensitivity sweep is checked and timed against: per (layer, level), prune the layer
in place with ``torch.nn.utils.prune.l1_unstructured`` and run the whole network (tests and ``make bench``)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.sensitivity import DEFAULT_SPARSITIES, Batches
from lightning_prune.pruning.unstructured import is_masked


@torch.no_grad()
def naive_sensitivity_scan(
    model: nn.Module,
    dataloader: Batches,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> dict[str, list[float]]:
    """The reference: per (layer, level), prune the layer in place with ``l1_unstructured``, run the net."""
    names = list(prunable_modules(model)) if layers is None else list(layers)
    modules = prunable_modules(model)
    if any(is_masked(modules[n]) for n in names):
        raise ValueError("naive_sensitivity_scan expects layers without pruning masks")
    device = next(model.parameters()).device
    batches = [(x.to(device), y.to(device)) for x, y in islice(dataloader, max_batches)]
    was_training = model.training
    model.eval()
    result: dict[str, list[float]] = {}
    try:
        for name in names:
            module, result[name] = modules[name], []
            original = module.weight.detach().clone()
            for s in sparsities:
                if s > 0:
                    prune.l1_unstructured(module, "weight", amount=s)
                hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
                if s > 0:
                    prune.remove(module, "weight")
                    module.weight.data = original.clone()
                result[name].append(100.0 * hits / sum(len(y) for _, y in batches))
    finally:
        model.train(was_training)
    return result
