"""Export one pruned model: write each requested format, reload what was written, compare outputs.

An artifact that does not reproduce its source model on a real batch is an error, not a warning:
the hand-off must run the network that was measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
from lightning_prune.export.measure import Forward, latency_ms, max_abs_diff, same_top1, size_mb, top1
from lightning_prune.export.onnx_export import export_onnx, onnx_runner, onnx_session
from lightning_prune.export.onnx_int8 import (
    INT8_ONNX_SCHEME,
    check_onnx_int8,
    compress,
    compressed_size_mb,
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
from lightning_prune.models import VGG
from lightning_prune.profiling.static import count_macs
from lightning_prune.pruning.layers import count_parameters, weight_sparsity

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
        backend = pick_backend(backend)
        calibration = list(calibration_batches)
        result.int8 = quantize_int8(model, calibration, backend)
        result.int8_check = check_int8(model, result.int8)
        if not (result.int8_check.zeros_preserved and result.int8_check.widths_kept):
            raise ExportError(f"int8: quantization changed the pruned structure ({result.int8_check.as_dict()})")
        result.files["int8"] = save_int8(result.int8, out / f"{variant}.int8.pt")
        names["int8"] = result.files["int8"].name
        reloaded = load_int8(result.files["int8"], backend=backend)
        result.matches["int8"] = _match(result.int8, reloaded, x, atol, "int8 reload")
        images = sum(len(b) for b in calibration)
        result.metadata["int8"] = {"backend": backend, "scheme": INT8_SCHEME, "calibration_images": images,
                                   **result.int8_check.as_dict()}
        if "onnx" in formats:
            _int8_onnx(result, out / f"{variant}.int8.onnx", calibration, x, names)
    describe()
    return result


def _int8_onnx(result: ExportResult, path: Path, calibration: list[torch.Tensor], x: torch.Tensor,
               names: dict[str, str]) -> None:
    """int8 ONNX from the float ONNX, checked (zeros, zero points, widths), and its compressed file, reloaded."""
    quantize_onnx(result.files["onnx"], path, calibration)
    check = check_onnx_int8(result.files["onnx"], path)
    if not check.ok:
        raise ExportError(f"int8 onnx: quantization changed the pruned structure ({check.as_dict()})")
    result.files["int8_onnx"], names["int8_onnx"] = path, path.name
    result.files["compressed"] = compress(path)
    names["compressed"] = result.files["compressed"].name
    session, unpacked = onnx_session(path), load_compressed(result.files["compressed"])
    result.matches["compressed"] = _match(onnx_runner(session), onnx_runner(unpacked), x, 0.0, "compressed int8 onnx")
    result.int8_onnx = session
    result.metadata["int8_onnx"] = {"scheme": INT8_ONNX_SCHEME, "calibration_images": sum(len(b) for b in calibration),
                                    **check.as_dict()}


def export_checkpoint(
    checkpoint: str | Path | CheckpointModel,
    out_dir: str | Path,
    formats: Sequence[str],
    check_batch: torch.Tensor,
    variant: str | None = None,
    metadata: dict[str, Any] | None = None,
    calibration_batches: Iterable[torch.Tensor] | None = None,
    atol: float = ATOL,
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
    """
    ck = checkpoint if isinstance(checkpoint, CheckpointModel) else load_checkpoint_model(checkpoint)
    info = {"task": ck.task, "method": ck.method, "structure": ck.structure, "source_checkpoint": str(ck.path),
            "lineage": [step.get("task") for step in ck.lineage], "masked_layers": ck.masked_layers,
            **(metadata or {})}
    return export_model(ck.model, out_dir, variant or ck.path.stem, formats, check_batch, info,
                        calibration_batches, atol)


@torch.no_grad()
def handoff_figures(
    result: ExportResult,
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    latency_batches: Sequence[torch.Tensor],
    warmup: int = 2,
) -> dict[str, Any]:
    """Accuracy, size, latency and MACs of the variant's float, int8 and ONNX forms (``handoff.json`` entry).

    Every form is measured on the same batches: top-1 over ``eval_batches`` (the test set), latency
    as ms per batch over ``latency_batches`` after ``warmup`` untimed passes, the forms taking turns.
    """
    model = result.float_model
    float_top1, images = top1(model, eval_batches)
    params, nonzero = count_parameters(model)
    fig: dict[str, Any] = {
        "variant": result.variant,
        "task": result.metadata.get("task"),
        "method": result.metadata.get("method"),
        "structure": result.metadata.get("structure"),
        "lineage": result.metadata.get("lineage") or [],
        "seed": result.metadata.get("seed"),
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": result.metadata.get("sparsity"),
        "source_checkpoint": result.metadata.get("source_checkpoint"),
        "channels": list(model.channels),
        "eval_images": images,
        "batch_size": len(latency_batches[0]) if latency_batches else None,
        "float_top1": float_top1,
        "macs": count_macs(model),
        "files": {k: str(v) for k, v in result.files.items()},
        "outputs_match": {k: m.as_dict() for k, m in result.matches.items()},
    }
    if "state_dict" in result.files:
        fig["float_size_mb"] = size_mb(result.files["state_dict"])
    forwards: dict[str, Forward] = {"float": model}
    run_onnx = result.onnx_forward()
    if run_onnx is not None:
        forwards["onnx"] = run_onnx
        fig["onnx_size_mb"] = size_mb(result.files["onnx"])
        fig["onnx_top1"], _ = top1(run_onnx, eval_batches)
    if result.int8 is not None:
        forwards["int8"] = result.int8
        fig["int8_size_mb"] = size_mb(result.files["int8"])
        fig["int8_top1"], _ = top1(result.int8, eval_batches)
        fig["int8"] = result.metadata.get("int8")
    if "state_dict" in result.files:
        fig["float_compressed_mb"] = compressed_size_mb(result.files["state_dict"])
    if result.int8_onnx is not None:
        forwards["int8_onnx"] = onnx_runner(result.int8_onnx)
        fig["int8_onnx_size_mb"] = size_mb(result.files["int8_onnx"])
        fig["compressed_mb"] = size_mb(result.files["compressed"])
        fig["int8_onnx_top1"], _ = top1(forwards["int8_onnx"], eval_batches)
        fig["int8_onnx"] = result.metadata.get("int8_onnx")
    for name, (mean, std) in latency_ms(forwards, latency_batches, warmup).items():
        fig[f"{name}_latency_ms"], fig[f"{name}_latency_ms_std"] = mean, std
    return fig
