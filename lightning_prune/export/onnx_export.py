"""ONNX export with a dynamic batch axis, and running the file in ONNX Runtime.

``dynamo=True`` (torch 2.14's default; the TorchScript exporter is deprecated) needs the ``deploy`` extra.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_prune.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEPLOY_HINT = "install the deploy extra: pip install -e '.[deploy]'"


ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # what --format onnx needs


def require(module: str) -> None:
    """One line naming the deploy extra when ``module`` is missing, or installed but broken (a native library
    that fails to load shows only at import)."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise ExportError(f"--format onnx: the {module} package is not installed; {DEPLOY_HINT}") from err
    except Exception as err:  # noqa: BLE001 - a broken install raises ImportError, OSError, AttributeError, ...
        first = (str(err).strip().splitlines() or [""])[0]
        raise ExportError(f"--format onnx: the {module} package is installed but cannot be imported "
                          f"({type(err).__name__}: {first}); reinstall it ({DEPLOY_HINT})") from err


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Write ``model`` (plain, CPU) to ``path``: input ``input`` (N, 3, 32, 32), output ``logits``.

    Traced on ``example``, at least 2 images, as the batch axis is dynamic."""
    batch = torch.export.Dim("batch")
    model = model.eval()
    # The exporter prints progress lines to stdout even with verbose=False on some paths.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
        )
    return Path(path)


def onnx_session(path: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session on a file (or its bytes); ``threads`` defaults to torch's, so latencies compare."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # No busy-waiting between calls: spinning threads would steal the cores PyTorch is timed on next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_runner(session) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``tensor -> tensor`` function that runs ``session`` on a float32 CPU batch."""

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])

    return run
