"""Cross-layer equalization (Nagel et al., ICCV 2019, "Data-Free Quantization"): one range per channel pair.

ReLU and max-pooling commute with a positive per-channel scale: dividing output channel ``i`` by
``s_i = sqrt(r1_i / r2_i)`` and multiplying the next layer's input ``i`` by it keeps the function and
gives both ranges ``sqrt(r1_i r2_i)``, so no channel (e.g. one a refit inflated) takes an int8 range alone.
The scale goes into BatchNorm, so pruned conv zeros stay exact. No data is needed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_prune.models import VGG


def _pairs(model: VGG) -> list[tuple[nn.Module, nn.Module | None, nn.Module]]:
    """(producer, its BatchNorm or None, consumer) for every pair of consecutive weight layers."""
    convs = [(conv, bn) for _, conv, bn in model.conv_layers()]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    pairs = [(convs[i][0], convs[i][1], convs[i + 1][0]) for i in range(len(convs) - 1)]
    pairs.append((convs[-1][0], convs[-1][1], linears[0]))
    pairs += [(linears[i], None, linears[i + 1]) for i in range(len(linears) - 1)]
    return pairs


def _out_scale(producer: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """The factor BatchNorm applies to each output channel (1 without BatchNorm)."""
    if bn is None:
        return torch.ones(producer.weight.shape[0], dtype=producer.weight.dtype)
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


def output_ranges(producer: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """Max |weight| of each output channel of ``producer`` with ``bn`` folded in."""
    w = producer.weight.detach().flatten(1).abs().amax(1)
    return w * _out_scale(producer, bn).detach().abs()


def input_ranges(consumer: nn.Module) -> torch.Tensor:
    """Max |weight| over each input channel of ``consumer`` (a conv's or linear's column)."""
    w = consumer.weight.detach()
    return w.transpose(0, 1).flatten(1).abs().amax(1)


@torch.no_grad()
def _scale_pair(producer: nn.Module, bn: nn.Module | None, consumer: nn.Module, s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` and multiply the consumer's inputs by it."""
    if bn is not None:
        bn.weight.div_(s)
        bn.bias.div_(s)
    else:
        producer.weight.div_(s.view(-1, *([1] * (producer.weight.dim() - 1))))
        if producer.bias is not None:
            producer.bias.div_(s)
    consumer.weight.mul_(s.view(1, -1, *([1] * (consumer.weight.dim() - 2))))


@torch.no_grad()
def equalize(model: VGG, iterations: int = 20, tolerance: float = 1e-6) -> VGG:
    """A copy of ``model`` (plain, masks folded) with every channel pair equalized; ``model`` is unchanged.

    Sweeps until no scale moves by more than ``tolerance``; channels with an all-zero side keep scale 1."""
    if any(hasattr(m, "weight_mask") for m in model.modules()):
        raise ValueError("equalize: fold the pruning masks first")
    out = copy.deepcopy(model).eval()
    first = next(m for m in out.classifier if isinstance(m, nn.Linear))
    if first.in_features != out.channels[-1]:
        raise ValueError(f"equalize: classifier.0 reads {first.in_features} features, the last conv has "
                         f"{out.channels[-1]} channels (inputs must be 32x32)")
    for _ in range(iterations):
        moved = 0.0
        for producer, bn, consumer in _pairs(out):
            r1, r2 = output_ranges(producer, bn), input_ranges(consumer)
            alive = (r1 > 0) & (r2 > 0)
            s = torch.ones_like(r1)
            s[alive] = torch.sqrt(r1[alive] / r2[alive])
            _scale_pair(producer, bn, consumer, s)
            moved = max(moved, float((s - 1).abs().max()))
        if moved <= tolerance:
            break
    return out
