"""Latency and memory of inference batches, measured with perf_counter and torch.profiler."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only), so that timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: nn.Module, batches: list[torch.Tensor], warmup: int = 2) -> tuple[float, float]:
    """Mean and std in ms of one forward pass per batch (already on the device), after ``warmup`` passes."""
    device = batches[0].device
    model.eval()
    for i in range(warmup):
        model(batches[i % len(batches)])
    sync(device)
    times = []
    for x in batches:
        start = time.perf_counter()
        model(x)
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.fmean(times), (statistics.stdev(times) if len(times) > 1 else 0.0)


def _resident_bytes(model: nn.Module, device: torch.device) -> int:
    """Bytes of the model's own tensors on the device (COO indices and values for sparse ones)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != device.type:
            continue
        t = t.coalesce() if t.is_sparse else t  # COO: its indices and values
        for part in (t.indices(), t.values()) if t.is_sparse else (t,):
            total += part.nelement() * part.element_size()
    return total


def _profiled_pass(model: nn.Module, x: torch.Tensor, profile_memory: bool = False) -> profile:
    """One forward pass under torch.profiler, after an unprofiled one (first-call allocations and
    oneDNN caches should not count)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    model.eval()
    model(x)
    sync(x.device)
    with profile(activities=activities, profile_memory=profile_memory) as prof:
        model(x)
        sync(x.device)
    return prof


@torch.inference_mode()
def measure_memory(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Peak and average memory in MB of one forward pass: the model's resident tensors plus the running sum
    of the profiler's allocation/free events, at its maximum and averaged over the operators' starts."""
    device = x.device
    prof = _profiled_pass(model, x, profile_memory=True)
    want = "CUDA" if device.type == "cuda" else "CPU"
    events = sorted(prof.profiler.kineto_results.events(), key=lambda e: e.start_ns())
    base = _resident_bytes(model, device)
    level, peak, samples = 0, 0, []
    for e in events:
        if e.name() == "[memory]":
            if str(e.device_type()).endswith(want):
                level += e.nbytes()
                peak = max(peak, level)
        else:
            samples.append(level)
    avg = statistics.fmean(samples) if samples else 0.0
    return (base + peak) / 1e6, (base + max(avg, 0.0)) / 1e6


SPARSE_MARKERS = ("sparse", "to_dense")


@torch.inference_mode()
def top_operators(model: nn.Module, x: torch.Tensor, count: int = 8) -> list[dict]:
    """The ``count`` operators of most self time in one forward pass (device time on CUDA), plus every sparse
    or densifying one: the evidence of which kernels ran, whatever the weights are stored as."""
    device = x.device
    prof = _profiled_pass(model, x)
    rows = []
    for event in prof.key_averages():
        cpu_us = float(event.self_cpu_time_total)
        device_us = float(getattr(event, "self_device_time_total", 0.0) or 0.0)
        if cpu_us <= 0 and device_us <= 0:
            continue
        row = {"name": event.key, "calls": int(event.count), "self_cpu_ms": cpu_us / 1e3}
        if device.type == "cuda":
            row["self_device_ms"] = device_us / 1e3
        rows.append(row)
    key = "self_device_ms" if device.type == "cuda" else "self_cpu_ms"
    total = sum(r[key] for r in rows) or 1.0
    rows.sort(key=lambda r: r[key], reverse=True)
    for r in rows:
        r["share"] = r[key] / total
    return rows[:count] + [r for r in rows[count:] if any(m in r["name"] for m in SPARSE_MARKERS)]
