"""Figures of the hand-off: output agreement, top-1, latency and file size of any ``tensor -> tensor`` model.

The same functions measure the PyTorch float model, the int8 model and the ONNX Runtime session,
so their numbers compare: same batches, same warm-up, same timer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def max_abs_diff(a: Forward, b: Forward, x: torch.Tensor) -> float:
    """Largest absolute difference between the two models' outputs on the batch ``x``."""
    return float((a(x).float() - b(x).float()).abs().max())


@torch.no_grad()
def same_top1(a: Forward, b: Forward, x: torch.Tensor) -> bool:
    """Both models predict the same class for every image of ``x``."""
    return bool(torch.equal(a(x).argmax(1), b(x).argmax(1)))


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

    The models take turns batch by batch, so a load that other processes put on a shared CPU
    falls on all of them alike instead of on whichever ran at the wrong moment.
    """
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
