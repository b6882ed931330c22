"""How the float model becomes int8, and the gate that refuses an int8 model which lost accuracy.

:func:`prepare` equalizes (and fine-tunes) the model both int8 paths quantize; the float files stay the
measured model. Cross-layer equalization (Nagel et al., ICCV 2019): ReLU and max-pooling commute with a
positive per-channel scale, so dividing output channel ``i`` by ``sqrt(r1_i / r2_i)`` and multiplying the
next layer's input ``i`` by it keeps the function and gives both weight ranges ``sqrt(r1_i r2_i)``. The
scale goes into BatchNorm, so pruned conv zeros stay exact. No data is needed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.errors import ExportError
from lightning_prune.export.fakequant import SHARE_BITS, qat_finetune
from lightning_prune.models import VGG
from lightning_prune.names import CALIBRATIONS

INT8_FORMS = {"int8": "PyTorch int8", "int8_onnx": "int8 ONNX"}


@dataclass
class Int8Check:
    """What an int8 form kept of its float model: exact zeros as int 0, symmetric zero points, the widths."""

    zeros_preserved: bool
    zero_points_zero: bool
    widths_kept: bool
    layers: int  # conv/linear weights quantized
    float_zeros: int
    int8_zeros: int  # >= float_zeros: tiny weights round to 0 too
    weight_count: int

    @property
    def ok(self) -> bool:
        return self.zeros_preserved and self.zero_points_zero and self.widths_kept and self.layers > 0

    @property
    def int8_sparsity(self) -> float:
        return self.int8_zeros / self.weight_count if self.weight_count else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "int8_sparsity": self.int8_sparsity}

    @classmethod
    def tally(cls, layers: list[tuple[np.ndarray, np.ndarray, Any]], widths_kept: bool = True) -> Int8Check:
        """Sum up (float weight, int8 values, zero points or None) per layer; a reshaped layer lost width."""
        same = [w.shape == q.shape for w, q, _ in layers]
        kept = [bool((q[w == 0] == 0).all()) for (w, q, _), s in zip(layers, same) if s]
        return cls(zeros_preserved=all(kept),
                   zero_points_zero=all(zp is None or not np.asarray(zp).any() for _, _, zp in layers),
                   widths_kept=widths_kept and all(same), layers=len(layers),
                   float_zeros=sum(int((w == 0).sum()) for w, _, _ in layers),
                   int8_zeros=sum(int((q == 0).sum()) for _, q, _ in layers),
                   weight_count=sum(w.size for w, _, _ in layers))


@dataclass(frozen=True)
class Int8Settings:
    """The int8 recipe of one export (each field is the ``export`` option of its name), recorded in handoff.json."""

    equalize: bool = True
    calibration: str = "minmax"
    qat_epochs: int = 0
    qat_lr: float = 1e-4
    max_drop: float = 1.0
    share_bits: int = 0

    def __post_init__(self) -> None:
        if self.share_bits not in SHARE_BITS:
            raise ExportError(f"--share-bits: must be one of {', '.join(map(str, SHARE_BITS))}, got {self.share_bits}")
        if self.calibration not in CALIBRATIONS:
            raise ExportError(f"--calibration: unknown method {self.calibration!r}; allowed: {', '.join(CALIBRATIONS)}")
        if self.qat_epochs < 0:
            raise ExportError(f"--qat-epochs: must be >= 0, got {self.qat_epochs}")
        if not self.qat_lr > 0:
            raise ExportError(f"--qat-lr: must be > 0, got {self.qat_lr}")
        if not self.max_drop >= 0:
            raise ExportError(f"--max-int8-drop: must be >= 0 points, got {self.max_drop}")


def _pairs(model: VGG) -> list[tuple[nn.Module, nn.Module | None, nn.Module]]:
    """(producer, its BatchNorm or None, consumer) for every pair of consecutive weight layers."""
    convs = [(conv, bn) for _, conv, bn in model.conv_layers()]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    pairs = [(convs[i][0], convs[i][1], convs[i + 1][0]) for i in range(len(convs) - 1)]
    pairs.append((convs[-1][0], convs[-1][1], linears[0]))
    pairs += [(linears[i], None, linears[i + 1]) for i in range(len(linears) - 1)]
    return pairs


def output_ranges(producer: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """Max |weight| of each output channel of ``producer`` with ``bn``'s per-channel factor folded in."""
    w = producer.weight.detach().flatten(1).abs().amax(1)
    return w if bn is None else w * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs()


def input_ranges(consumer: nn.Module) -> torch.Tensor:
    """Max |weight| over each input channel of ``consumer`` (a conv's or linear's column)."""
    return consumer.weight.detach().transpose(0, 1).flatten(1).abs().amax(1)


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


def _same_function(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    tolerance = 1e-4 * float(ya.abs().max()) + 1e-5
    if float((ya - yb).abs().max()) > tolerance:
        raise ExportError("int8: cross-layer equalization changed the network's outputs; export with --no-equalize")


def prepare(
    model: nn.Module,
    settings: Int8Settings,
    calibration: Sequence[torch.Tensor],
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """The float model the int8 paths quantize (``model`` is not modified) and each remedy's seconds.

    Equalization must keep the function on the first ``calibration`` batch; ``train_batches`` feeds QAT."""
    seconds: dict[str, float] = {}
    prepared = model
    if settings.equalize:
        start = time.perf_counter()
        prepared = equalize(model)
        seconds["equalize"] = time.perf_counter() - start
        _same_function(model, prepared, calibration[0])
    if settings.qat_epochs:
        assert train_batches is not None, "QAT needs the training images"
        start = time.perf_counter()
        prepared = qat_finetune(prepared, train_batches(), calibration, settings.qat_epochs, settings.qat_lr,
                                share_bits=settings.share_bits)
        seconds["qat"] = time.perf_counter() - start
    return prepared, seconds


def gate(figures: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """The int8 gate: each int8 form's top-1 against the float top-1 (``figures`` from ``handoff_figures``)."""
    reference = figures.get("float_top1")
    forms = {}
    for form in INT8_FORMS:
        top1 = figures.get(f"{form}_top1")
        if isinstance(top1, (int, float)) and isinstance(reference, (int, float)):
            forms[form] = {"top1": top1, "drop": reference - top1, "passed": reference - top1 <= max_drop}
    return {"max_drop": max_drop, "float_top1": reference, "eval_images": figures.get("eval_images"),
            "forms": forms, "passed": all(f["passed"] for f in forms.values())}


def refusal(variant: str, outcome: dict[str, Any], settings: Int8Settings) -> str:
    """The one line a refused variant gets: both accuracies per failing form, and what may help."""
    failed = [f"{INT8_FORMS[form]} top-1 {f['top1']:.2f} vs float {outcome['float_top1']:.2f}"
              for form, f in outcome["forms"].items() if not f["passed"]]
    helps = [] if settings.equalize else ["--equalize"]
    helps += [f"--qat-epochs {max(2, settings.qat_epochs * 2)}"]
    helps += [f"--calibration {c}" for c in CALIBRATIONS if c != settings.calibration]
    return (f"int8 gate: {variant}: {'; '.join(failed)} (loses more than --max-int8-drop {settings.max_drop:g} "
            f"points); nothing of {variant} was published; try {', '.join(helps)}")
