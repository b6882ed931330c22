"""Export one pruned model: write each requested format, reload what was written, compare outputs.

A file not reproducing its source on a real batch is an error: the hand-off runs what was measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_prune.errors import ExportError
from lightning_prune.export.artifact import fold_masks, load_state_dict_model, write_sidecar
from lightning_prune.export.checkpoint import CheckpointModel, load_checkpoint_model
from lightning_prune.export.fakequant import share_onnx_weights
from lightning_prune.export.figures import Forward
from lightning_prune.export.int8 import Int8Check, Int8Settings, prepare
from lightning_prune.export.onnx_export import export_onnx, onnx_runner, onnx_session
from lightning_prune.export.onnx_int8 import (
    INT8_ONNX_SCHEME,
    check_onnx_int8,
    compress,
    load_compressed,
    quantize_onnx,
)
from lightning_prune.export.quantize import QuantizedVGG, check_int8, load_int8, pick_backend, quantize_int8
from lightning_prune.models import VGG
from lightning_prune.pruning.layers import weight_sparsity
from lightning_prune.results import atomic_torch_save

FORMATS = ("state_dict", "onnx")
ATOL = 1e-4
INT8_SCHEME = "static PTQ: per-channel symmetric int8 weights, per-tensor quint8 activations (HistogramObserver)"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and checked, by format (``sidecar``, ``state_dict``, ``onnx``, ``int8``, ...)."""

    variant: str  # the files' stem
    float_model: VGG  # the exported float network: masks folded, a plain ``vgg16_bn``
    files: dict[str, Path] = field(default_factory=dict)
    matches: dict[str, dict[str, Any]] = field(default_factory=dict)  # agreement with the source (int8: its reload)
    int8: QuantizedVGG | None = None
    int8_check: Int8Check | None = None  # the zeros and widths int8 kept
    int8_onnx: Any = None  # the ONNX Runtime session of the int8 ONNX model, if written
    metadata: dict[str, Any] = field(default_factory=dict)  # the sidecar's
    _session: Any = None

    def onnx_forward(self) -> Forward | None:
        """ONNX Runtime on the written file (one session, created on first use)."""
        if "onnx" not in self.files:
            return None
        if self._session is None:
            self._session = onnx_session(self.files["onnx"])
        return onnx_runner(self._session)

    def path(self, suffix: str) -> Path:
        """The variant's file with this suffix, beside its sidecar."""
        return self.files["sidecar"].with_name(self.variant + suffix)

    def describe(self) -> Path:
        """(Re)write the sidecar: architecture, metadata and the files written so far."""
        names = {fmt: path.name for fmt, path in self.files.items() if fmt != "sidecar"}
        return write_sidecar(self.files["sidecar"], self.float_model, self.metadata, names)


def _match(source: Forward, written: Forward, x: torch.Tensor, atol: float, what: str) -> dict[str, Any]:
    """How closely a written artifact reproduces its source on the check batch; ExportError beyond ``atol``."""
    a, b = source(x).float(), written(x).float()
    diff = float((a - b).abs().max())
    if diff > atol:
        raise ExportError(f"{what}: reloaded outputs differ from the source model by {diff:.3g} "
                          f"(> {atol:g}) on a batch of {len(x)} images")
    return {"match": True, "max_abs_diff": diff, "same_top1": bool(torch.equal(a.argmax(1), b.argmax(1))),
            "atol": atol}


@torch.no_grad()
def export_model(
    source: VGG,
    out_dir: str | Path,
    variant: str,
    formats: Sequence[str],
    check_batch: torch.Tensor,
    metadata: dict[str, Any] | None = None,
    calibration_batches: Iterable[torch.Tensor] | None = None,
    atol: float = ATOL,
    int8: Int8Settings | None = None,
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> ExportResult:
    """Write ``<variant>.json`` plus ``formats`` into ``out_dir``; each reload must reproduce ``source``
    within ``atol`` on ``check_batch`` (N >= 2). ``calibration_batches`` (None: no int8) calibrate int8."""
    assert set(formats) <= set(FORMATS) and check_batch.dim() == 4 and len(check_batch) >= 2
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    source = source.cpu().eval()
    x = check_batch.cpu().float()
    result = ExportResult(variant, fold_masks(source), metadata=dict(metadata or {}))
    result.metadata.setdefault("sparsity", weight_sparsity(result.float_model))
    _float_formats(result, source, Path(out_dir) / f"{variant}.json", formats, x, atol)
    if calibration_batches is not None:
        _int8(result, list(calibration_batches), x, atol, int8 or Int8Settings(), train_batches)
    result.describe()
    return result


def _float_formats(result: ExportResult, source: VGG, sidecar: Path, formats: list[str], x: torch.Tensor,
                   atol: float) -> None:
    """The sidecar, the plain state dict and the float ONNX file, each reloaded and compared with ``source``."""
    model = result.float_model
    if "state_dict" in formats:
        result.files["state_dict"] = sidecar.with_name(f"{result.variant}.pt")
        atomic_torch_save(model.state_dict(), result.files["state_dict"])
    result.files["sidecar"] = sidecar
    result.describe()
    if "state_dict" in formats:
        result.matches["state_dict"] = _match(source, load_state_dict_model(sidecar), x, atol, "state_dict")
    if "onnx" in formats:
        result.files["onnx"] = export_onnx(model, result.path(".onnx"), x)
        result.matches["onnx"] = _match(source, result.onnx_forward(), x, atol, "onnx (ONNX Runtime)")


def _int8(result: ExportResult, calibration: list[torch.Tensor], x: torch.Tensor, atol: float,
          settings: Int8Settings, train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None
          ) -> None:
    """Both int8 forms of the prepared float model (equalized, fine-tuned), each checked and reloaded."""
    model, backend = result.float_model, pick_backend()
    prepared, seconds = prepare(model, settings, calibration, train_batches)
    result.int8 = quantize_int8(prepared, calibration, backend)
    result.int8_check = check_int8(prepared, result.int8)
    if not result.int8_check.ok:
        raise ExportError(f"int8: quantization changed the pruned structure ({result.int8_check.as_dict()})")
    result.files["int8"] = result.path(".int8.pt")
    atomic_torch_save(result.int8.state_dict(), result.files["int8"])
    result.matches["int8"] = _match(result.int8, load_int8(result.files["int8"], backend=backend), x, atol,
                                    "int8 reload")
    recipe = {**asdict(settings), "seconds": seconds}
    result.metadata["int8"] = {"backend": backend, "scheme": INT8_SCHEME, "recipe": recipe,
                               "calibration_images": sum(len(b) for b in calibration), **result.int8_check.as_dict()}
    if "onnx" not in result.files:
        return
    with tempfile.TemporaryDirectory(dir=result.files["sidecar"].parent) as work:  # a prepared graph isn't published
        source = result.files["onnx"] if prepared is model else export_onnx(prepared, Path(work) / "prepared.onnx", x)
        _int8_onnx(result, source, calibration, x, settings)


def _int8_onnx(result: ExportResult, source: Path, calibration: list[torch.Tensor], x: torch.Tensor,
               settings: Int8Settings) -> None:
    """int8 ONNX from a float ONNX, checked (zeros, zero points, widths), and its compressed file, reloaded."""
    path = quantize_onnx(source, result.path(".int8.onnx"), calibration, settings.calibration)
    sharing = share_onnx_weights(path, settings.share_bits) if settings.share_bits else None
    check = check_onnx_int8(source, path)
    if not check.ok:
        raise ExportError(f"int8 onnx: quantization changed the pruned structure ({check.as_dict()})")
    result.files["int8_onnx"] = path
    result.files["compressed"] = compress(path)
    session, unpacked = onnx_session(path), load_compressed(result.files["compressed"])
    result.matches["compressed"] = _match(onnx_runner(session), onnx_runner(unpacked), x, 0.0, "compressed int8 onnx")
    result.int8_onnx = session
    result.metadata["int8_onnx"] = {"scheme": INT8_ONNX_SCHEME, "calibration": settings.calibration, "sharing": sharing,
                                    "recipe": result.metadata["int8"]["recipe"],
                                    "calibration_images": sum(len(b) for b in calibration), **check.as_dict()}


def export_checkpoint(checkpoint: str | Path | CheckpointModel, out_dir: str | Path, formats: Sequence[str],
                      check_batch: torch.Tensor, variant: str | None = None, metadata: dict[str, Any] | None = None,
                      **options: Any) -> ExportResult:
    """:func:`export_model` for a checkpoint of ``ImageClassifier`` (file or :class:`CheckpointModel`), its
    sidecar's metadata starting from what the checkpoint records."""
    ck = checkpoint if isinstance(checkpoint, CheckpointModel) else load_checkpoint_model(checkpoint)
    info = {"task": ck.task, "method": ck.method, "structure": ck.structure, "source_checkpoint": str(ck.path),
            "lineage": [step.get("task") for step in ck.lineage],
            "lineage_sources": [step.get("source") for step in ck.lineage], "masked_layers": ck.masked_layers,
            **(metadata or {})}
    return export_model(ck.model, out_dir, variant or ck.path.stem, formats, check_batch, info, **options)
