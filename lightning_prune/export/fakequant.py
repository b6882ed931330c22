"""int8 simulated in float (fake quantization), on the grid ONNX Runtime's static quantization uses.

Weights per output channel, symmetric, ``scale = max|w| / 127`` (what ``quantize_static`` writes);
activations one uint8 range per conv/linear input, as the QDQ graph. Rounding has a straight-through
gradient, so the simulation both finds which part of int8 costs accuracy and fine-tunes through it (QAT).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.export.sharing import share
from lightning_prune.pruning.layers import prunable_modules

QMAX_WEIGHT = 127
QMAX_ACTIVATION = 255


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def fake_quant_weight(w: torch.Tensor, share_bits: int = 0) -> torch.Tensor:
    """Per-output-channel symmetric int8: each row on its own grid of step ``max|row| / 127``.

    ``share_bits`` > 0: every non-zero integer then moves to the nearest of the layer's shared levels
    (:func:`lightning_prune.export.sharing.shared_levels`), as the export's weight sharing will move it.
    """
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
    """A forward pre-hook that rounds a layer's input to uint8 over the range it has seen.

    ``observing``: only widen the range (calibration); ``momentum`` > 0 while gradients are on
    (training): the range follows each batch's min/max as a moving average (as torch's MovingAverageMinMaxObserver).
    """

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
    """A copy of ``model`` (plain VGG, masks folded) that computes as its int8 form would.

    ``weights`` and ``activations`` (inputs, calibrate first) of the chosen ``layers`` (default: every conv
    and linear) are rounded; ``share_bits``: the int8 weights' sharing (0: none).
    """

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

