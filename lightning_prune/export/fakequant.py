"""int8 simulated in float (fake quantization) on ONNX Runtime's static grid, weight sharing, and QAT.

Weights per output channel, symmetric, ``scale = max|w| / 127`` (what ``quantize_static`` writes);
activations one uint8 range per conv/linear input, as the QDQ graph. Rounding has a straight-through
gradient, so the simulation both finds which part of int8 costs accuracy and fine-tunes through it (QAT).
Weight sharing (Deep Compression, Han et al., ICLR 2016) moves each layer's non-zero int8 values to the
nearest of ``2**bits - 1`` k-means levels, zeros kept: LZMA then codes a weight in about ``bits`` bits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.pruning.layers import prunable_modules

SHARE_BITS = (0, 2, 3, 4, 5, 6, 7)  # 0: no sharing
QMAX_WEIGHT = 127
QMAX_ACTIVATION = 255


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: torch.Tensor, share_bits: int = 0) -> torch.Tensor:
    """Per-output-channel symmetric int8 (step ``max|row| / 127``); ``share_bits`` > 0: then on the
    layer's shared levels, as the export's weight sharing will move it."""
    absmax = w.detach().flatten(1).abs().amax(1).clamp_min(1e-12)
    scale = (absmax / QMAX_WEIGHT).view(-1, *([1] * (w.dim() - 1)))
    ints = torch.clamp(_round_ste(w / scale), -QMAX_WEIGHT, QMAX_WEIGHT)
    if share_bits:
        found = ints.detach().to(torch.int8).cpu().numpy()
        ints = ints + (torch.from_numpy(share(found, share_bits)).to(ints) - ints).detach()
    return ints * scale


def fake_quant_activation(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per-tensor asymmetric uint8 over ``[min(low, 0), max(high, 0)]`` (0.0 maps to an integer)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / QMAX_ACTIVATION
    zero = round(-low / scale)
    q = torch.clamp(_round_ste(x / scale) + zero, 0, QMAX_ACTIVATION)
    return (q - zero) * scale


class WeightQuant(nn.Module):
    """A parametrization: the layer computes with its int8-rounded (and shared) weight; the float weight learns."""

    def __init__(self, share_bits: int = 0) -> None:
        super().__init__()
        self.share_bits = share_bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(w, self.share_bits)


class ActivationQuant:
    """A forward pre-hook that rounds a layer's input to uint8 over the range it has seen; ``observing``:
    only widen it (calibration); ``momentum`` > 0 in training: follow batch min/max as a moving average."""

    def __init__(self) -> None:
        self.low, self.high, self.observing, self.momentum = float("inf"), float("-inf"), True, 0.0

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if self.observing:
            self.low, self.high = min(self.low, lo), max(self.high, hi)
            return args
        if self.momentum and torch.is_grad_enabled():
            self.low += self.momentum * (lo - self.low)
            self.high += self.momentum * (hi - self.high)
        return (fake_quant_activation(x, self.low, self.high), *args[1:])


class Int8Simulation:
    """A copy of ``model`` (plain VGG, masks folded) that computes as its int8 form would: ``weights``
    and ``activations`` (calibrate first) of ``layers`` (default: all conv and linear) rounded."""

    def __init__(self, model: nn.Module, weights: bool = True, activations: bool = True,
                 layers: Iterable[str] | None = None, share_bits: int = 0) -> None:
        self.model = copy.deepcopy(model).eval()
        chosen = prunable_modules(self.model)
        if layers is not None:
            wanted = set(layers)
            unknown = wanted - set(chosen)
            if unknown:
                raise ValueError(f"Int8Simulation: no layer {sorted(unknown)}; layers are {sorted(chosen)}")
            chosen = {n: m for n, m in chosen.items() if n in wanted}
        self.layers = chosen
        self.observers: dict[str, ActivationQuant] = {}
        for name, layer in chosen.items():
            if weights:
                parametrize.register_parametrization(layer, "weight", WeightQuant(share_bits))
            if activations:
                self.observers[name] = ActivationQuant()
                layer.register_forward_pre_hook(self.observers[name])

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> Int8Simulation:
        """Set every activation range from the batches (min/max over all of them), then start rounding."""
        for observer in self.observers.values():
            observer.observing = True
        self.model.eval()
        for x in batches:
            self.model(x)
        for observer in self.observers.values():
            observer.observing = False
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def float_model(self) -> nn.Module:
        """The underlying float network with its (possibly fine-tuned) float weights, hooks and rounding removed."""
        out = copy.deepcopy(self.model)
        for layer in prunable_modules(out).values():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
            layer._forward_pre_hooks.clear()
        return out.eval()


def shared_levels(values: np.ndarray, bits: int, iterations: int = 50) -> np.ndarray:
    """The ``2**bits - 1`` non-zero integer levels that k-means finds for the non-zero int8 ``values``."""
    nonzero = values[values != 0].astype(np.int64)
    k = 2 ** bits - 1
    levels = np.unique(nonzero)
    if len(levels) <= k:
        return levels.astype(np.int8)
    grid = np.arange(-127, 128)
    counts = np.bincount(nonzero + 127, minlength=255).astype(np.float64)
    centers = np.quantile(nonzero, (np.arange(k) + 0.5) / k).astype(np.float64)
    for _ in range(iterations):
        nearest = np.abs(grid[:, None] - centers[None, :]).argmin(1)
        mass = np.bincount(nearest, weights=counts, minlength=k)
        moved = np.bincount(nearest, weights=counts * grid, minlength=k)
        new = np.where(mass > 0, moved / np.maximum(mass, 1e-12), centers)
        if np.allclose(new, centers):
            break
        centers = new
    levels = np.clip(np.round(centers), -127, 127)
    levels[levels == 0] = np.where(centers[levels == 0] < 0, -1, 1)  # a kept weight never becomes a zero
    return np.unique(levels).astype(np.int8)


def share(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (int8) with every non-zero replaced by its nearest shared level; zeros unchanged."""
    levels = shared_levels(values, bits).astype(np.int64)
    out = values.astype(np.int64)
    mask = out != 0
    out[mask] = levels[np.abs(out[mask][:, None] - levels[None, :]).argmin(1)]
    return out.astype(np.int8)


def share_onnx_weights(path: Path, bits: int) -> dict[str, Any]:
    """Rewrite the int8 conv/linear weights of the QDQ model at ``path`` in place; returns what it did."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    layers = distinct = 0
    for tensor in model.graph.initializer:
        weight = tensor.name.endswith("_quantized") and tensor.data_type == onnx.TensorProto.INT8
        if not weight or len(tensor.dims) < 2:
            continue
        shared = share(numpy_helper.to_array(tensor), bits)
        tensor.CopyFrom(numpy_helper.from_array(shared, tensor.name))
        layers += 1
        distinct = max(distinct, len(np.unique(shared)))
    onnx.save(model, str(path))
    return {"bits": bits, "layers": layers, "max_distinct_values": distinct}


def qat_finetune(
    model: nn.Module,
    train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    calibration: Sequence[torch.Tensor],
    epochs: int,
    lr: float = 1e-4,
    momentum: float = 0.01,
    share_bits: int = 0,
) -> nn.Module:
    """A fine-tuned float copy of ``model`` (plain VGG, masks folded; not modified) that int8 barely changes.

    SGD in eval mode (BatchNorm statistics kept), a small ``lr``: the weights only learn to absorb the
    rounding; exact zeros are put back after every step. ``share_bits``: through the weight sharing too."""
    assert epochs >= 1, "qat_finetune needs epochs >= 1"
    keep = {name: layer.weight.detach() != 0 for name, layer in prunable_modules(model).items()}
    sim = Int8Simulation(model, share_bits=share_bits).calibrate(calibration)
    for observer in sim.observers.values():
        observer.momentum = momentum
    params = [p for p in sim.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    weights = {name: layer.parametrizations.weight.original for name, layer in sim.layers.items()}
    sim.model.eval()
    with torch.enable_grad():  # the export runs under no_grad
        for _ in range(epochs):
            for x, y in train_batches:
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(sim(x), y).backward()
                optimizer.step()
                with torch.no_grad():
                    for name, w in weights.items():
                        w.mul_(keep[name])
    return sim.float_model()
