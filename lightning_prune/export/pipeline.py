"""Export one pruned model: write each requested format, reload what was written, compare outputs.

An artifact that does not reproduce its source model on a real batch is an error, not a warning:
the hand-off must run the network that was measured.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lightning_prune.export.artifact import (
    fold_masks,
    load_state_dict_model,
    save_state_dict,
    write_sidecar,
)
from lightning_prune.export.checkpoint import CheckpointModel, load_checkpoint_model
from lightning_prune.export.errors import ExportError
from lightning_prune.export.int8 import Int8Settings, prepare
from lightning_prune.export.measure import Forward, max_abs_diff, same_top1
from lightning_prune.export.onnx_export import export_onnx, onnx_runner, onnx_session
from lightning_prune.export.onnx_int8 import (
    INT8_ONNX_SCHEME,
    check_onnx_int8,
    compress,
    load_compressed,
    quantize_onnx,
)
from lightning_prune.export.quantize import (
    Int8Check,
    QuantizedVGG,
    check_int8,
    load_int8,
    pick_backend,
    quantize_int8,
    save_int8,
)
from lightning_prune.export.sharing import share_onnx_weights
from lightning_prune.models import VGG
from lightning_prune.pruning.layers import weight_sparsity

FORMATS = ("state_dict", "onnx")
ATOL = 1e-4
INT8_SCHEME = "static PTQ: per-channel symmetric int8 weights, per-tensor quint8 activations (HistogramObserver)"


def check_formats(formats: Sequence[str], option: str = "--format") -> list[str]:
    """The requested formats, each one of :data:`FORMATS` (one line naming the option otherwise)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"{option}: unsupported format {', '.join(map(repr, unknown)) or '(none)'}; "
                          f"allowed: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


@dataclass
class Match:
    """How closely a written artifact reproduces the source model on the check batch."""

    max_abs_diff: float
    same_top1: bool
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol

    def as_dict(self) -> dict[str, Any]:
        return {"match": self.ok, "max_abs_diff": self.max_abs_diff, "same_top1": self.same_top1, "atol": self.atol}


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and checked.

    Args:
        variant: Name of the variant (the files' stem).
        float_model: The exported float network (masks folded, plain ``vgg16_bn``).
        files: Format (``sidecar``, ``state_dict``, ``onnx``, ``int8``) to path.
        matches: Format to its output agreement with the source model (int8: with its own reload).
        int8: The int8 model, if quantized.
        int8_check: Zeros and widths the int8 model kept, if quantized.
        metadata: The sidecar's metadata.
    """

    variant: str
    float_model: VGG
    files: dict[str, Path] = field(default_factory=dict)
    matches: dict[str, Match] = field(default_factory=dict)
    int8: QuantizedVGG | None = None
    int8_check: Int8Check | None = None
    int8_onnx: Any = None  # the ONNX Runtime session of the int8 ONNX model, if written
    metadata: dict[str, Any] = field(default_factory=dict)
    _session: Any = None

    def onnx_forward(self) -> Forward | None:
        """ONNX Runtime on the written file (one session, created on first use)."""
        if "onnx" not in self.files:
            return None
        if self._session is None:
            self._session = onnx_session(self.files["onnx"])
        return onnx_runner(self._session)


def _match(source: Forward, written: Forward, x: torch.Tensor, atol: float, what: str) -> Match:
    found = Match(max_abs_diff(source, written, x), same_top1(source, written, x), atol)
    if not found.ok:
        raise ExportError(f"{what}: reloaded outputs differ from the source model by {found.max_abs_diff:.3g} "
                          f"(> {atol:g}) on a batch of {len(x)} images")
    return found


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
    backend: str | None = None,
    int8: Int8Settings | None = None,
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> ExportResult:
    """Write ``<variant>.json`` plus the requested formats into ``out_dir``, each reloaded and compared.

    Args:
        source: The model as trained (may carry ``torch.nn.utils.prune`` masks); not modified.
        out_dir: Folder to write into (created).
        variant: File stem and the name the hand-off table shows.
        formats: Any of ``state_dict`` (``<variant>.pt``) and ``onnx`` (``<variant>.onnx``).
        check_batch: Real images (N >= 2, eval transforms) the reloaded artifacts must reproduce.
        metadata: What the sidecar records besides the architecture (task, method, accuracy, ...).
        calibration_batches: Training images for int8 quantization (``<variant>.int8.pt``); None: no int8.
        atol: Largest absolute logit difference accepted between the source and a reloaded artifact.
        backend: Quantized engine for int8 (default: x86 where available).
        int8: The int8 recipe (equalization, calibration method, QAT); default :class:`Int8Settings`.
        train_batches: Training batches for quantization-aware fine-tuning (``int8.qat_epochs`` > 0).

    Raises:
        ExportError: An unsupported format, or an artifact whose outputs do not match.
    """
    formats = check_formats(formats)
    if check_batch.dim() != 4 or len(check_batch) < 2:
        raise ExportError(f"check batch must be (N >= 2, 3, 32, 32) images, got shape {tuple(check_batch.shape)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = source.cpu().eval()
    x = check_batch.cpu().float()
    model = fold_masks(source)
    result = ExportResult(variant, model, metadata=dict(metadata or {}))
    result.metadata.setdefault("sparsity", weight_sparsity(model))
    sidecar = out / f"{variant}.json"
    names: dict[str, str] = {}

    def describe() -> None:
        write_sidecar(sidecar, model, result.metadata, names)

    if "state_dict" in formats:
        result.files["state_dict"] = save_state_dict(model, out / f"{variant}.pt")
        names["state_dict"] = result.files["state_dict"].name
    describe()
    result.files["sidecar"] = sidecar
    if "state_dict" in formats:
        result.matches["state_dict"] = _match(source, load_state_dict_model(sidecar), x, atol, "state_dict")
    if "onnx" in formats:
        result.files["onnx"] = export_onnx(model, out / f"{variant}.onnx", x)
        names["onnx"] = result.files["onnx"].name
        result.matches["onnx"] = _match(source, result.onnx_forward(), x, atol, "onnx (ONNX Runtime)")
    if calibration_batches is not None:
        _int8(result, model, list(calibration_batches), x, names, out, atol, pick_backend(backend),
              int8 or Int8Settings(), train_batches)
    describe()
    return result


def _int8(result: ExportResult, model: VGG, calibration: list[torch.Tensor], x: torch.Tensor,
          names: dict[str, str], out: Path, atol: float, backend: str, settings: Int8Settings,
          train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None) -> None:
    """Both int8 forms of the prepared float model (equalized, fine-tuned), each checked and reloaded."""
    prepared, seconds = prepare(model, settings, calibration, train_batches)
    result.int8 = quantize_int8(prepared, calibration, backend)
    result.int8_check = check_int8(prepared, result.int8)
    if not (result.int8_check.zeros_preserved and result.int8_check.widths_kept):
        raise ExportError(f"int8: quantization changed the pruned structure ({result.int8_check.as_dict()})")
    result.files["int8"] = save_int8(result.int8, out / f"{result.variant}.int8.pt")
    names["int8"] = result.files["int8"].name
    result.matches["int8"] = _match(result.int8, load_int8(result.files["int8"], backend=backend), x, atol,
                                    "int8 reload")
    recipe = {**settings.as_dict(), "seconds": seconds}
    result.metadata["int8"] = {"backend": backend, "scheme": INT8_SCHEME, "recipe": recipe,
                               "calibration_images": sum(len(b) for b in calibration), **result.int8_check.as_dict()}
    if "onnx" not in result.files:
        return
    if prepared is model:
        _int8_onnx(result, result.files["onnx"], out / f"{result.variant}.int8.onnx", calibration, x, names, settings)
        return
    with tempfile.TemporaryDirectory(dir=out) as work:  # the prepared float graph is quantized, not published
        source = export_onnx(prepared, Path(work) / "prepared.onnx", x)
        _int8_onnx(result, source, out / f"{result.variant}.int8.onnx", calibration, x, names, settings)


def _int8_onnx(result: ExportResult, source: Path, path: Path, calibration: list[torch.Tensor], x: torch.Tensor,
               names: dict[str, str], settings: Int8Settings) -> None:
    """int8 ONNX from a float ONNX, checked (zeros, zero points, widths), and its compressed file, reloaded."""
    quantize_onnx(source, path, calibration, settings.calibration)
    sharing = share_onnx_weights(path, settings.share_bits) if settings.share_bits else None
    check = check_onnx_int8(source, path)
    if not check.ok:
        raise ExportError(f"int8 onnx: quantization changed the pruned structure ({check.as_dict()})")
    result.files["int8_onnx"], names["int8_onnx"] = path, path.name
    result.files["compressed"] = compress(path)
    names["compressed"] = result.files["compressed"].name
    session, unpacked = onnx_session(path), load_compressed(result.files["compressed"])
    result.matches["compressed"] = _match(onnx_runner(session), onnx_runner(unpacked), x, 0.0, "compressed int8 onnx")
    result.int8_onnx = session
    result.metadata["int8_onnx"] = {"scheme": INT8_ONNX_SCHEME, "calibration": settings.calibration, "sharing": sharing,
                                    "recipe": result.metadata["int8"]["recipe"],
                                    "calibration_images": sum(len(b) for b in calibration), **check.as_dict()}


def export_checkpoint(
    checkpoint: str | Path | CheckpointModel,
    out_dir: str | Path,
    formats: Sequence[str],
    check_batch: torch.Tensor,
    variant: str | None = None,
    metadata: dict[str, Any] | None = None,
    calibration_batches: Iterable[torch.Tensor] | None = None,
    atol: float = ATOL,
    int8: Int8Settings | None = None,
    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> ExportResult:
    """:func:`export_model` for a Lightning checkpoint of ``ImageClassifier`` (dense, masked or channel-pruned).

    The sidecar's metadata starts from what the checkpoint says (task, method, source path, masked
    layers); ``metadata`` adds to it (accuracy, dataset, normalisation).

    Args:
        checkpoint: The ``.ckpt`` file, or a :class:`CheckpointModel` already loaded from one.
        out_dir: Folder to write into.
        formats: Any of ``state_dict`` and ``onnx``.
        check_batch: Real images the reloaded artifacts must reproduce.
        variant: File stem; default: the checkpoint's file stem.
        metadata: Extra sidecar metadata.
        calibration_batches: Training images for int8 quantization; None: no int8.
        atol: Largest absolute logit difference accepted.
        int8: The int8 recipe; train_batches: training images for its QAT.
    """
    ck = checkpoint if isinstance(checkpoint, CheckpointModel) else load_checkpoint_model(checkpoint)
    info = {"task": ck.task, "method": ck.method, "structure": ck.structure, "source_checkpoint": str(ck.path),
            "lineage": [step.get("task") for step in ck.lineage],
            "lineage_sources": [step.get("source") for step in ck.lineage], "masked_layers": ck.masked_layers,
            **(metadata or {})}
    return export_model(ck.model, out_dir, variant or ck.path.stem, formats, check_batch, info,
                        calibration_batches, atol, int8=int8, train_batches=train_batches)
