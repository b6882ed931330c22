"""The hand-off figures of one exported variant: accuracy, size, latency and MACs of its float, int8 and ONNX forms.

Every form is measured by the same functions on the same batches (:mod:`lightning_prune.export.measure`),
so the numbers compare; ``handoff.json`` keeps one such entry per variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_prune.export.measure import Forward, latency_ms, size_mb, top1
from lightning_prune.export.onnx_export import onnx_runner
from lightning_prune.export.onnx_int8 import compressed_size_mb
from lightning_prune.export.pipeline import ExportResult
from lightning_prune.profiling.static import count_macs
from lightning_prune.pruning.layers import count_parameters


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
        "lineage_sources": result.metadata.get("lineage_sources") or [],
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
