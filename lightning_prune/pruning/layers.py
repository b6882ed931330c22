"""Which weights count as prunable, and how to read them whatever form they are stored in."""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers (and their COO forms) by module name (``features.0`` ...), in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)
            or isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.is_sparse}


def dense(t: torch.Tensor) -> torch.Tensor:
    """The tensor as the forward pass uses it: COO densified (a masked ``weight`` is the product already)."""
    return t.to_dense() if t.is_sparse else t


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over all parameters, whatever the storage (dense, masked, COO)."""
    total = nonzero = 0
    for module in model.modules():
        for name, _ in module.named_parameters(recurse=False):
            t = getattr(module, name.removesuffix("_orig"))  # a masked weight as the forward pass sees it
            total += t.numel()
            nonzero += int(torch.count_nonzero(dense(t.detach())))
    return total, nonzero


def layer_table(model: nn.Module) -> list[dict]:
    """Per prunable layer: name, shape, parameter count, sparsity (the results.json ``layers``)."""
    rows = []
    for name, module in prunable_modules(model).items():
        w = dense(module.weight).detach()
        rows.append({"name": name, "shape": list(w.shape), "params": w.numel(),
                     "sparsity": 1 - int(torch.count_nonzero(w)) / w.numel()})
    return rows


def weight_sparsity(model: nn.Module) -> float:
    """1 - non-zero / total over the prunable (conv and linear) weights."""
    weights = [dense(m.weight).detach() for m in prunable_modules(model).values()]
    total = sum(w.numel() for w in weights)
    return sum(w.numel() - int(torch.count_nonzero(w)) for w in weights) / total if total else 0.0
