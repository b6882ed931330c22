"""The hand-off figures: top-1, latency, size and MACs of a variant's float, int8 and ONNX forms.

Any ``tensor -> tensor`` model is measured on the same batches with the same timer, so the numbers compare.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_prune.export.onnx_export import onnx_runner
from lightning_prune.export.onnx_int8 import compressed_size_mb
from lightning_prune.profiling.static import count_macs
from lightning_prune.pruning.layers import count_parameters

if TYPE_CHECKING:
    from lightning_prune.export.pipeline import ExportResult

Forward = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def top1(forward: Forward, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Top-1 in percent over the batches, and the number of images it counts."""
    correct = total = 0
    for x, y in batches:
        correct += int((forward(x).argmax(1) == y).sum())
        total += len(y)
    return (100.0 * correct / total if total else float("nan")), total


@torch.no_grad()
def latency_ms(
    forwards: dict[str, Forward], batches: Sequence[torch.Tensor], warmup: int = 2
) -> dict[str, tuple[float, float]]:
    """Mean and std in ms of one call per batch for each model, after ``warmup`` untimed calls each.

    The models take turns batch by batch, so a load on a shared CPU falls on all of them alike."""
    for i in range(warmup):
        for forward in forwards.values():
            forward(batches[i % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for x in batches:
        for name, forward in forwards.items():
            start = time.perf_counter()
            forward(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.fmean(t), statistics.stdev(t) if len(t) > 1 else 0.0) for name, t in times.items()}


def size_mb(path: str | Path) -> float:
    """File size in MB (1e6 bytes), like the profile's serialized size."""
    return Path(path).stat().st_size / 1e6


@torch.no_grad()
def handoff_figures(
    result: ExportResult,
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    latency_batches: Sequence[torch.Tensor],
    warmup: int = 2,
) -> dict[str, Any]:
    """Accuracy (``eval_batches``), size, latency (``latency_batches``) and MACs of the variant's forms:
    its ``handoff.json`` entry."""
    model, meta = result.float_model, result.metadata
    float_top1, images = top1(model, eval_batches)
    params, nonzero = count_parameters(model)
    fig: dict[str, Any] = {
        "variant": result.variant, **{k: meta.get(k) for k in ("task", "method", "structure")},
        "lineage": meta.get("lineage") or [], "lineage_sources": meta.get("lineage_sources") or [],
        "seed": meta.get("seed"), "params": params, "nonzero_params": nonzero, "sparsity": meta.get("sparsity"),
        "source_checkpoint": meta.get("source_checkpoint"), "channels": list(model.channels), "eval_images": images,
        "batch_size": len(latency_batches[0]) if latency_batches else None, "float_top1": float_top1,
        "macs": count_macs(model), "files": {k: str(v) for k, v in result.files.items()},
        "outputs_match": dict(result.matches),
    }
    forwards: dict[str, Forward] = {"float": model}
    if "state_dict" in result.files:
        fig["float_size_mb"] = size_mb(result.files["state_dict"])
        fig["float_compressed_mb"] = compressed_size_mb(result.files["state_dict"])
    int8_onnx = onnx_runner(result.int8_onnx) if result.int8_onnx is not None else None
    for form, forward in (("onnx", result.onnx_forward()), ("int8", result.int8), ("int8_onnx", int8_onnx)):
        if forward is not None:
            forwards[form] = forward
            fig[f"{form}_size_mb"] = size_mb(result.files[form])
            fig[f"{form}_top1"], _ = top1(forward, eval_batches)
            if form != "onnx":
                fig[form] = meta.get(form)  # the int8 recipe and what it kept
    if int8_onnx is not None:
        fig["compressed_mb"] = size_mb(result.files["compressed"])
    for name, (mean, std) in latency_ms(forwards, latency_batches, warmup).items():
        fig[f"{name}_latency_ms"], fig[f"{name}_latency_ms_std"] = mean, std
    return fig
