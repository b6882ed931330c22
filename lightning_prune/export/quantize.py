"""int8 post-training static quantization of the VGG, and the checks that it kept the pruning.

Eager-mode ``torch.ao.quantization``: in torch 2.14 the one path with real int8 CPU kernels and no extra
package (docs/deploy.md). Symmetric per-channel weights keep 0.0 at int 0; BN folding keeps zeros and widths.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from lightning_prune.errors import ExportError
from lightning_prune.export.artifact import build_from_sidecar, read_sidecar
from lightning_prune.export.int8 import Int8Check
from lightning_prune.models import VGG
from lightning_prune.pruning.layers import prunable_modules

PREFERRED_BACKENDS = ("x86", "fbgemm", "qnnpack")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the observers' per-call UserWarnings; the deprecation of torch.ao.quantization stays visible."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def pick_backend(backend: str | None = None) -> str:
    """The quantized engine to use: ``backend`` if this torch build has it, else the first of x86/fbgemm/qnnpack."""
    supported = [b for b in torch.backends.quantized.supported_engines if b != "none"]
    found = [b for b in ([backend] if backend else PREFERRED_BACKENDS) if b in supported]
    if not found:
        raise ExportError(f"int8: no quantized engine {backend or PREFERRED_BACKENDS} in this torch build "
                          f"(it has {supported})")
    return found[0]


class QuantizedVGG(nn.Module):
    """The VGG between a QuantStub (float -> quint8 input) and a DeQuantStub (int8 logits -> float)."""

    def __init__(self, model: VGG) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.model, self.dequant = QuantStub(), model, DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(x)))


def fusion_groups(model: VGG, prefix: str = "model.") -> list[list[str]]:
    """Module names to fuse: each conv with its BN and ReLU, and the two hidden linears with their ReLUs."""
    names = [name for name, _ in model.features.named_children()]
    groups = [[f"{prefix}features.{n}" for n in names[i:i + 3]]
              for i, (_, m) in enumerate(model.features.named_children()) if isinstance(m, nn.Conv2d)]
    hidden = [[f"{prefix}classifier.{i}", f"{prefix}classifier.{i + 1}"] for i in (0, 3)]
    return groups + hidden


def prepared(model: VGG, backend: str) -> QuantizedVGG:
    """A fused, observed deep copy of ``model`` (float, eval mode), ready for calibration."""
    from torch.ao import quantization as tq

    wrapper = QuantizedVGG(copy.deepcopy(model)).eval()
    tq.fuse_modules(wrapper, fusion_groups(wrapper.model), inplace=True)
    wrapper.qconfig = tq.get_default_qconfig(backend)
    tq.prepare(wrapper, inplace=True)
    return wrapper


def _convert(wrapper: QuantizedVGG, backend: str) -> QuantizedVGG:
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = backend  # packs the int8 weights for this engine's kernels
    tq.convert(wrapper, inplace=True)
    return wrapper


@torch.no_grad()
def quantize_int8(
    model: VGG, calibration_batches: Iterable[torch.Tensor], backend: str | None = None
) -> QuantizedVGG:
    """int8 static post-training quantization of a plain VGG (masks folded; not modified), float in and out.

    It sets ``torch.backends.quantized.engine`` (``backend``: default x86 where available), which must stay."""
    backend = pick_backend(backend)
    with _quiet():
        wrapper = prepared(model.cpu().eval(), backend)
        for x in calibration_batches:
            wrapper(x.cpu())
        return _convert(wrapper, backend)


def load_int8(path: str | Path, backend: str | None = None) -> QuantizedVGG:
    """The int8 model of ``<variant>.int8.pt``: a converted VGG of the sidecar's widths, with its weights."""
    doc = read_sidecar(path)
    backend = pick_backend(backend or (doc.get("metadata", {}).get("int8") or {}).get("backend"))
    with _quiet():
        wrapper = _convert(prepared(build_from_sidecar(doc), backend), backend)
        wrapper.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return wrapper.eval()


def int8_weights(qmodel: QuantizedVGG) -> dict[str, torch.Tensor]:
    """Each quantized conv/linear's weight (a quantized tensor), by the float model's layer name."""
    out = {}
    for name, module in qmodel.model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(weight, torch.Tensor):  # quantized modules: weight()
            w = weight()
            if isinstance(w, torch.Tensor) and w.is_quantized:
                out[name] = w
    return out


def check_int8(float_model: VGG, qmodel: QuantizedVGG) -> Int8Check:
    """Compare the int8 weights' integer values with the float weights, layer by layer."""
    weights = int8_weights(qmodel)
    float_layers = prunable_modules(float_model)
    assert set(weights) == set(float_layers), f"int8 layers {sorted(weights)}, float {sorted(float_layers)}"
    layers = []
    for name, layer in float_layers.items():
        q = weights[name]
        per_channel = q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        zp = q.q_per_channel_zero_points() if per_channel else q.q_zero_point()
        layers.append((layer.weight.detach().numpy(), q.int_repr().numpy(), zp))
    convs = [m for m in qmodel.model.features if hasattr(m, "out_channels")]
    widths = [int(m.out_channels) for m in convs] == list(float_model.channels)
    widths &= int(qmodel.model.classifier[0].out_features) == float_model.classifier_width
    return Int8Check.tally(layers, widths)
