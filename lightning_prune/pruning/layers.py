"""Which weights count as prunable, and how to read them whatever form they are stored in."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers (and their COO forms) by module name (``features.0`` ... ``classifier.6``), in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) or _is_sparse_layer(m)}


def _is_sparse_layer(m: nn.Module) -> bool:
    return isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.is_sparse


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.is_sparse else t


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses: masked for ``torch.nn.utils.prune``, densified for COO."""
    return dense(module.weight)


def effective_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter as the forward pass sees it, once (``weight_orig`` read as ``weight``)."""
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if p_name.endswith("_orig"):
                p_name = p_name.removesuffix("_orig")
                p = getattr(module, p_name)
            yield (f"{mod_name}.{p_name}" if mod_name else p_name), p


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, non-zero) over all parameters, whatever the storage (dense, masked, COO)."""
    total = nonzero = 0
    for _, t in effective_tensors(model):
        total += t.numel()
        nonzero += int(torch.count_nonzero(dense(t.detach())))
    return total, nonzero


def layer_table(model: nn.Module) -> list[dict]:
    """Per prunable layer: name, shape, parameter count, sparsity (the results.json ``layers``)."""
    rows = []
    for name, module in prunable_modules(model).items():
        w = effective_weight(module).detach()
        rows.append({"name": name, "shape": list(w.shape), "params": w.numel(),
                     "sparsity": 1 - int(torch.count_nonzero(w)) / w.numel()})
    return rows


def weight_sparsity(model: nn.Module) -> float:
    """1 - non-zero / total over the prunable (conv and linear) weights."""
    total = zeros = 0
    for module in prunable_modules(model).values():
        w = effective_weight(module).detach()
        total += w.numel()
        zeros += w.numel() - int(torch.count_nonzero(w))
    return zeros / total if total else 0.0
