"""int8 for ONNX Runtime: static quantization of the exported float ONNX, checked like every export file.

``quantize_static`` in QDQ format, per-channel symmetric int8 weights (a pruned 0.0 stays int 0). The
``.int8.onnx.xz`` file is what a device downloads: only an entropy coder turns unstructured zeros into bytes.
"""

from __future__ import annotations

import lzma
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from lightning_prune.errors import ExportError
from lightning_prune.export.int8 import Int8Check
from lightning_prune.export.onnx_export import INPUT_NAME, onnx_session
from lightning_prune.results import atomic_write_bytes

COMPRESSED_SUFFIX = ".xz"
INT8_ONNX_SCHEME = ("QDQ static quantization (onnxruntime quantize_static): per-channel symmetric int8 weights, "
                    "uint8 activations")
ORT_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def quantize_onnx(float_path: Path, out_path: Path, calibration: Iterable[torch.Tensor],
                  method: str = "minmax") -> Path:
    """Write the int8 QDQ model of ``float_path`` to ``out_path`` (atomically), calibrated on the batches by
    ``method``, one of :data:`lightning_prune.names.CALIBRATIONS`."""
    from onnxruntime import quantization as ortq
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

        def rewind(self) -> None:
            self.feeds = iter([{INPUT_NAME: b} for b in batches])

    batches = [np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32) for x in calibration]
    with tempfile.TemporaryDirectory(dir=out_path.parent) as work:
        prepared, staged = Path(work) / "prepared.onnx", Path(work) / out_path.name
        quant_pre_process(str(float_path), str(prepared))  # shape inference and graph clean-up, as ORT advises
        ortq.quantize_static(
            str(prepared), str(staged), Batches(), quant_format=ortq.QuantFormat.QDQ, per_channel=True,
            weight_type=ortq.QuantType.QInt8, activation_type=ortq.QuantType.QUInt8,
            calibrate_method=getattr(ortq.CalibrationMethod, ORT_CALIBRATION[method]),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        atomic_write_bytes(out_path, staged.read_bytes())
    return out_path


def check_onnx_int8(float_path: Path, int8_path: Path) -> Int8Check:
    """Compare each int8 weight (``<name>_quantized``) with the float initializer of the same name."""
    import onnx
    from onnx import numpy_helper

    floats = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(float_path)).graph.initializer}
    ints = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8_path)).graph.initializer}
    layers = []
    for name, q in ints.items():
        base = name.removesuffix("_quantized")  # not biases (int32) nor activations
        if name.endswith("_quantized") and q.dtype == np.int8 and base in floats and floats[base].ndim >= 2:
            layers.append((floats[base], q, ints.get(f"{base}_zero_point")))
    return Int8Check.tally(layers)


def _xz(path: Path) -> bytes:
    return lzma.compress(Path(path).read_bytes(), preset=9 | lzma.PRESET_EXTREME)


def compress(path: Path) -> Path:
    """``<file>.xz``: LZMA at its strongest preset, written atomically beside the file."""
    out = path.with_name(path.name + COMPRESSED_SUFFIX)
    atomic_write_bytes(out, _xz(path))
    return out


def compressed_size_mb(path: Path) -> float:
    """Bytes / 1e6 that :func:`compress` would write, without writing them (for the float files)."""
    return len(_xz(path)) / 1e6


def load_compressed(path: Path, threads: int | None = None):
    """An ONNX Runtime session on a ``.onnx.xz`` file, decompressed in memory: what a device does after download."""
    try:
        data = lzma.decompress(Path(path).read_bytes())
    except (OSError, lzma.LZMAError, EOFError) as err:  # missing, truncated, or not an .xz file at all
        reason = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
        raise ExportError(f"{path}: not a readable .xz file ({reason})") from err
    return onnx_session(data, threads)
