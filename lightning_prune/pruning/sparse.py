"""Export of a masked model to torch.sparse COO, the COO check, and sparse inference modules.

torch.sparse has no sparse convolution: ``SparseConv2d`` densifies its COO weight at every call
(``densify_once`` does it once at load, which shows that cost); ``SparseLinear`` uses ``torch.sparse.mm``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.pruning.layers import prunable_modules
from lightning_prune.pruning.unstructured import copy_model, get_masks, make_permanent

MASKS_FILE = "masks.pt"
SPARSE_FILE = "sparse_coo.pt"
CHECK_FILE = "coo_check.json"


class _SparseLayer(nn.Module):
    """A conv or linear layer holding its weight as COO; :meth:`densified` gives the ordinary layer back."""

    def _filled(self, layer: nn.Module) -> nn.Module:
        """``layer`` (a fresh dense conv or linear) with this layer's weight and bias."""
        with torch.no_grad():
            layer.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def __deepcopy__(self, memo: dict) -> _SparseLayer:
        """A deep copy that clones the sparse parameters (``Parameter.__deepcopy__`` cannot)."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__ = copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "_parameters"}, memo)
        new._parameters = {k: None if p is None else nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                           for k, p in self._parameters.items()}
        return new


class SparseConv2d(_SparseLayer):
    """A conv whose weight is a COO tensor, densified in every forward call."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self.weight = nn.Parameter(weight.coalesce(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to_dense(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def densified(self) -> nn.Conv2d:
        return self._filled(nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype))


class SparseLinear(_SparseLayer):
    """A linear layer computing ``W x`` with ``torch.sparse.mm`` on its COO weight."""

    def __init__(self, linear: nn.Linear, weight: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(weight.coalesce(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def densified(self) -> nn.Linear:
        return self._filled(nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                      device=self.weight.device, dtype=self.weight.dtype))


SPARSE_TYPES = (SparseConv2d, SparseLinear)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _sparse_layer(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return SparseConv2d(module, weight)
    if isinstance(module, nn.Linear):
        return SparseLinear(module, weight)
    raise TypeError(f"no sparse version of {type(module).__name__}")


def to_sparse_model(
    model: nn.Module, densify_once: bool = False, masks: Mapping[str, torch.Tensor] | None = None
) -> nn.Module:
    """A copy of ``model`` whose pruned layers (a mask, own or in ``masks``, that removes a weight) hold COO
    weights (or, ``densify_once``, dense ones again); the rest stay ordinary dense layers."""
    masks = dict(get_masks(model) if masks is None else masks)
    sparse = make_permanent(copy_model(model))
    for name, module in prunable_modules(sparse).items():
        mask = masks.get(name)
        if mask is None or bool(mask.all()) or isinstance(module, SPARSE_TYPES):
            continue
        mask = mask.to(module.weight.device).bool()  # the COO indices are the mask's (kept zeros stay stored)
        coo = torch.sparse_coo_tensor(mask.nonzero().t(), module.weight.detach()[mask], module.weight.shape,
                                      check_invariants=False).coalesce()
        layer = _sparse_layer(module, coo)
        _replace(sparse, name, layer.densified() if densify_once else layer)
    return sparse


def load_sparse_model(
    template: nn.Module, state_dict: Mapping[str, torch.Tensor], densify_once: bool = False
) -> nn.Module:
    """Rebuild a saved sparse model on a copy of a dense ``template`` of the same architecture
    (``densify_once``: its COO weights filled into ordinary layers)."""
    model = make_permanent(copy_model(template))
    for name, module in prunable_modules(model).items():
        weight = state_dict.get(f"{name}.weight")
        if weight is not None and weight.is_sparse and not isinstance(module, SPARSE_TYPES):
            _replace(model, name, _sparse_layer(module, weight))
    model.load_state_dict(state_dict)
    if densify_once:
        for name, module in prunable_modules(model).items():
            if isinstance(module, SPARSE_TYPES):
                _replace(model, name, module.densified())
    return model


def sparse_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The COO weights of a sparse model (or state dict), by layer name."""
    items = model.items() if isinstance(model, Mapping) else model.state_dict().items()
    return {k.removesuffix(".weight"): v for k, v in items if k.endswith(".weight") and v.is_sparse}


def verify_coo(sparse: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Per layer, the coordinates on one side only of COO indices and mask non-zeros, plus COO duplicates
    (0 = exact); a layer missing on one side or of another shape counts all of its coordinates."""
    result = {}
    for name in list(masks) + [n for n in sparse if n not in masks]:
        coo, mask = sparse.get(name), masks.get(name)
        if coo is None or mask is None or tuple(coo.shape) != tuple(mask.shape):
            result[name] = (0 if coo is None else coo._nnz()) + (0 if mask is None else int(mask.bool().sum()))
            continue
        strides = [math.prod(coo.shape[i + 1 :]) for i in range(coo.dim())]  # row-major linear indices
        stored = (coo._indices().cpu() * torch.tensor(strides, dtype=torch.long).unsqueeze(1)).sum(0)
        unique = stored.unique()
        expected = mask.bool().flatten().nonzero().squeeze(1).cpu()
        _, counts = torch.cat([unique, expected]).unique(return_counts=True)
        result[name] = int((counts == 1).sum()) + len(stored) - len(unique)
    return result
